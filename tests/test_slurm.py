"""profiles/slurm on a real SLURM: a private one-node cluster on this machine (scripts/local-slurm.sh: munge,
slurmctld, slurmd), and a one-row quick matrix through the SLURM executor plugin to results/table.csv, its training
requeued half-way (as a preemption does) and its three evaluations run as one SLURM job.

Skipped only outside CI when SLURM is not installed (or not root); with CI=true it always runs (.ci/run installs
SLURM with scripts/setup.sh --slurm), so a cluster that does not start fails the test.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from steermoe.run.checkpoint import COMPLETE
from tests.test_workflow import REPO, VENV_BIN, copy_workflow, write_matrix

SCRIPT = REPO / "scripts" / "local-slurm.sh"
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
EXP = "layer_wise_whisper-tiny.en_smollm2_synth-en"
ROW = "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\t\t\t\t\t"


def snakemake_env(**extra) -> dict:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
            **extra}


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory):
    """A running one-node cluster (stopped at the end); its slurm.conf, for SLURM_CONF."""
    if os.environ.get("CI") != "true":
        search = f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/sbin"
        missing = [tool for tool in TOOLS if shutil.which(tool, path=search) is None]
        if missing:
            pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): run scripts/setup.sh --slurm")
        if os.geteuid() != 0:
            pytest.skip("the local SLURM cluster needs root (slurmd starts jobs as their user)")
    folder = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, f"the local SLURM cluster did not start:\n{start.stdout}\n{start.stderr}"
        assert start.stdout.strip() == f"export SLURM_CONF={folder / 'slurm.conf'}"
        yield folder / "slurm.conf"
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


def test_slurm_profile_keeps_the_catalogs_gpus(tmp_path):
    """The workflow profile replaces profiles/default, whose gpu=1 (a local limit) would cap the 4-GPU jobs."""
    root = copy_workflow(tmp_path / "wf")
    shutil.copy(root / "experiments/matrix-original.tsv", root / "experiments/matrix.tsv")
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--workflow-profile", "profiles/slurm", "-n"], cwd=root,
                          env=snakemake_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Using workflow specific profile profiles/slurm" in proc.stderr
    train_gpus = dict(re.findall(r"^rule train:\n(?:    .*\n)*?    wildcards: exp=(\S+)\n(?:    threads: \d+\n)?"
                                 r"    resources: .*gpu=(\d+)", proc.stdout, re.M))
    assert len(train_gpus) >= 9
    assert all(gpus == ("4" if "7b" in exp else "1") for exp, gpus in train_gpus.items()), train_gpus


def requeue_when_checkpointed(proc, checkpoint: Path, env: dict, timeout: float = 900) -> str:
    """The SLURM job id of the running train job, requeued (`scontrol requeue`, what a preemption does) once its
    first checkpoint is complete."""
    deadline = time.monotonic() + timeout
    while not (checkpoint / COMPLETE).is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "training never wrote its first checkpoint"
        time.sleep(0.5)
    jobs = subprocess.run(["squeue", "-h", "-o", "%i %k"], env=env, capture_output=True, text=True).stdout
    (job_id,) = [line.split()[0] for line in jobs.splitlines() if "rule_train" in line]
    requeue = subprocess.run(["scontrol", "requeue", job_id], env=env, capture_output=True, text=True)
    assert requeue.returncode == 0, requeue.stderr
    return job_id


@pytest.mark.slow
def test_quick_matrix_runs_through_slurm_resumes_a_requeued_training_and_groups_its_evaluations(
        slurm_conf, embedded_models, tmp_path):
    models = Path(next(iter(embedded_models.values()))).parent
    root = copy_workflow(tmp_path / "wf")
    write_matrix(root, ROW)
    catalog = root / "experiments" / "catalog.yaml"  # 2 threads (the shipped smollm2 asks for 1, SLURM's default)
    entries = yaml.safe_load(catalog.read_text())
    entries["decoders"]["smollm2"]["resources"]["threads"] = 2
    # long enough to be requeued after its first checkpoint (step 5) and before its end
    entries["defaults"]["quick"]["settings"].update(max_steps=30, save_steps=5, eval_steps=30)
    catalog.write_text(yaml.safe_dump(entries, sort_keys=False))
    command = [str(VENV_BIN / "snakemake"), "--workflow-profile", "profiles/slurm", "results/table.csv",
               "--config", "quick=true", f"models={models}",
               # no accounting on the local cluster: squeue for job status (MinJobAge 600 s), checked early and
               # often; successful jobs' SLURM logs are kept to show where each job ran
               "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
               "--slurm-keep-successful-logs",
               # the data rules ask for 8 CPUs, as many worker processes as this machine's 2 cores can use
               "--set-threads", "prepare_data=2", "prepare_test_set=2"]
    env = snakemake_env(SLURM_CONF=str(slurm_conf))
    with open(tmp_path / "snakemake.log", "w+") as log:
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            requeued = requeue_when_checkpointed(proc, root / "results" / EXP / "train" / "checkpoint-5", env)
            proc.wait(timeout=1500)
        finally:
            proc.kill()
        log.seek(0)
        output = log.read()
    controller_log = (slurm_conf.parent / "log" / "slurmctld.log").read_text()[-3000:]
    assert proc.returncode == 0, f"{output[-6000:]}\n--- slurmctld.log\n{controller_log}"

    table = list(csv.DictReader((root / "results" / "table.csv").open()))
    assert {r["experiment"] for r in table} == {EXP, f"{EXP}_on-test-unseen", f"{EXP}_on-test-ood"}  # synth-en's 3
    assert {r["status"] for r in table} == {"ok"}
    assert float(next(r for r in table if r["headline"] == "true")["value"]) >= 0

    # every non-local job was a SLURM job of this run: its log is where the executor put it, and the
    # controller's job completion log has it, completed, under the run's job name and in this workflow's folder
    run_id = re.search(r"SLURM run ID: (\S+)", output).group(1)
    logs = sorted((root / ".snakemake" / "slurm_logs").glob("*/**/*.log"))
    jobs = {log.stem: log.relative_to(root / ".snakemake" / "slurm_logs").parts[0] for log in logs}
    # the three evaluations of the model ran as one SLURM job (profiles/slurm: group-components)
    assert sorted(jobs.values()) == [f"group_evaluate-{EXP}_evaluate", "rule_prepare_data"] + \
        ["rule_prepare_test_set"] * 2 + ["rule_train"], output[-3000:]
    completed = {}
    for line in (slurm_conf.parent / "jobcomp.log").read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        completed[fields["JobId"]] = fields
    for job_id, rule in jobs.items():
        record = completed[job_id]
        assert (record["Name"], record["JobState"], record["WorkDir"]) == (run_id, "COMPLETED", str(root)), rule
    train = completed[next(job for job, rule in jobs.items() if rule == "rule_train")]
    assert train["ProcCnt"] == "2"  # the catalog's threads for smollm2 (set to 2 above) became --cpus-per-task
    # the requeued training went back to the queue under its job id and resumed from a checkpoint
    assert train["JobId"] == requeued
    summary = json.loads((root / "results" / EXP / "train" / "final" / "train_summary.json").read_text())
    assert re.fullmatch(r".*/checkpoint-\d+", summary["resumed_from"] or ""), summary
    assert summary["steps"] == 30
    assert completed[next(job for job, rule in jobs.items() if rule == "rule_prepare_data")]["ProcCnt"] == "2"
    # the local rule (aggregate) ran here, not on SLURM
    assert "localrule aggregate:" in output
