"""`steermoe launch`: jobs sharing a multi-GPU machine get disjoint GPUs, CPU jobs see none, several GPUs go through
the DeepSpeed launcher. GPUs are stood in for by a CUDA_VISIBLE_DEVICES pool: the claiming logic never touches them."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from steermoe.declare.experiments import master_port
from steermoe.run.launch import claim_gpus, launch_command

STEERMOE = str(Path(sys.executable).parent / "steermoe")
# the job: report its pid and visible GPUs, then hold them until its release file appears
JOB = ("import os, sys, time, pathlib; print(os.getpid(), repr(os.environ['CUDA_VISIBLE_DEVICES']), flush=True); "
       "release = pathlib.Path(sys.argv[1])\nwhile not release.exists(): time.sleep(0.05)")


def start(tmp_path, name, gpus, pool="0,1,2,3", **env):
    release = tmp_path / f"release-{name}"
    full_env = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
    full_env.update(CUDA_VISIBLE_DEVICES=pool, STEERMOE_GPU_LOCKS=str(tmp_path / "locks"), **env)
    proc = subprocess.Popen([STEERMOE, "launch", "--gpus", str(gpus), "--", sys.executable, "-c", JOB, str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    return proc, release


def report(proc):
    pid, gpus = proc.stdout.readline().split(" ", 1)
    return int(pid), eval(gpus)


def test_concurrent_jobs_get_their_own_gpu_and_a_third_waits_for_a_free_one(tmp_path):
    (a, release_a), (b, release_b) = start(tmp_path, "a", 1, pool="0,1"), start(tmp_path, "b", 1, pool="0,1")
    pid_a, gpus_a = report(a)
    _, gpus_b = report(b)
    assert pid_a == a.pid  # the job replaced the launcher: it receives the job's signals itself
    assert {gpus_a, gpus_b} == {"0", "1"}
    c, release_c = start(tmp_path, "c", 1, pool="0,1")
    time.sleep(1.5)
    assert c.poll() is None
    release_b.touch()  # b ends: its GPU is free again
    assert report(c)[1] == gpus_b
    release_a.touch(), release_c.touch()
    for proc in (a, b, c):
        assert proc.wait(30) == 0
    assert "waiting for 1 free GPU(s) of 0,1" in c.stderr.read()


def test_multi_gpu_claims_are_disjoint_and_freed_with_their_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    first, first_locks = claim_gpus(2, tmp_path)
    second, second_locks = claim_gpus(2, tmp_path)
    assert sorted(first + second) == ["0", "1", "2", "3"]
    for fd in first_locks:
        os.close(fd)
    assert claim_gpus(2, tmp_path)[0] == first


def test_a_cpu_job_sees_no_gpu(tmp_path):
    cpu, release = start(tmp_path, "cpu", 0)
    assert report(cpu)[1] == ""
    release.touch()
    assert cpu.wait(30) == 0


def test_jobs_inside_one_slurm_allocation_share_its_gpus_and_other_allocations_are_apart(tmp_path):
    """A local profile inside `salloc` runs several one-GPU jobs in one allocation (GPUs 5 and 7): each gets its
    own. Another allocation on the node numbers its own device 5 too: its locks are its own."""
    first, release_first = start(tmp_path, "first", 1, pool="5,7", SLURM_JOB_ID="42")
    second, release_second = start(tmp_path, "second", 1, pool="5,7", SLURM_JOB_ID="42")
    assert {report(first)[1], report(second)[1]} == {"5", "7"}
    other, release_other = start(tmp_path, "other", 1, pool="5", SLURM_JOB_ID="43")
    assert report(other)[1] == "5"
    for release in (release_first, release_second, release_other):
        release.touch()
    assert first.wait(30) == 0 and second.wait(30) == 0 and other.wait(30) == 0
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["slurm-42", "slurm-43"]


def test_each_process_of_a_job_gets_its_share_of_the_jobs_threads(tmp_path):
    from steermoe.run.launch import threads_per_process

    assert [threads_per_process(16, gpus) for gpus in (0, 1, 2, 4, 32)] == [16, 16, 8, 4, 1]
    job = "import os; print(os.environ['OMP_NUM_THREADS'])"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1,2,3", "STEERMOE_GPU_LOCKS": str(tmp_path / "locks"),
           "OMP_NUM_THREADS": "16"}
    out = subprocess.run([STEERMOE, "launch", "--gpus", "0", "--threads", "6", "--", sys.executable, "-c", job],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "6", out.stderr


def test_asking_for_more_gpus_than_the_machine_has_is_a_clear_error(tmp_path):
    proc, _ = start(tmp_path, "big", 8, pool="0,1")
    assert proc.wait(30) == 2
    err = proc.stderr.read()
    assert "this job needs 8 GPU(s) but this machine offers 2 (CUDA_VISIBLE_DEVICES=0,1)" in err
    assert "resources.gpus in experiments/catalog.yaml" in err and "Traceback" not in err


def test_several_gpus_go_through_the_deepspeed_launcher_on_the_visible_devices():
    command = launch_command(["steermoe", "train", "--config", "x.yaml"], gpus=4, port=23456)
    # no --num_gpus: DeepSpeed would then ignore CUDA_VISIBLE_DEVICES and take GPUs 0..3
    assert command == ["deepspeed", "--master_port", "23456", shutil.which("steermoe") or "steermoe",
                       "train", "--config", "x.yaml"]
    assert launch_command(["steermoe", "evaluate"], gpus=1, port=1) == ["steermoe", "evaluate"]
    assert 20000 <= master_port("layer_wise_x") < 40000 and master_port("a") != master_port("b")


def test_local_rank_is_accepted_in_every_form_the_launchers_use(monkeypatch):
    from steermoe.cli import build_parser, take_local_rank

    for argv, rank in ((["--local_rank=1", "train", "--config", "x.yaml"], "1"),
                       (["train", "--config", "x.yaml", "--local_rank", "2"], "2"),
                       (["--local-rank=3", "evaluate", "--config", "x.yaml"], "3"),
                       (["train", "--local_rank=0", "--config", "x.yaml", "--deepspeed_config", "ds.json"], "0")):
        monkeypatch.setenv("LOCAL_RANK", "")  # restored (removed) after the test: later tests must not inherit it
        rest = take_local_rank(argv)
        assert os.environ["LOCAL_RANK"] == rank and not any("local" in a for a in rest)
        assert build_parser().parse_args(rest).config == "x.yaml"


def test_a_bad_local_rank_is_one_clear_error():
    proc = subprocess.run([STEERMOE, "--local_rank=x", "train", "--config", "x.yaml"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--local_rank must be a process index, got 'x'" in proc.stderr
