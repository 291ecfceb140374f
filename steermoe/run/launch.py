"""Starting a job on this machine: which GPUs it may see and its distributed master port.

Snakemake counts GPUs as a resource but does not say which ones a job gets, so jobs sharing a multi-GPU machine
would all see (and crowd onto) the same devices. `steermoe launch --gpus N -- COMMAND` claims N free GPUs with lock
files held until the command exits, shows the command only those (CUDA_VISIBLE_DEVICES), and starts it through the
DeepSpeed launcher when N > 1, each process with its share of the job's threads. Inside a SLURM allocation the pool
is the allocation's GPUs (CUDA_VISIBLE_DEVICES), locked per allocation: jobs of a local profile run inside `salloc`
share them without crowding onto the first. Torch-free: it runs before every job.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from steermoe.errors import ConfigError

DEFAULT_LOCK_DIR = Path(os.environ.get("STEERMOE_GPU_LOCKS", "/tmp/steermoe-gpu-locks"))


def gpu_pool() -> list[str]:
    """The GPUs this machine lets us use: CUDA_VISIBLE_DEVICES if set, else every GPU nvidia-smi lists."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return []


def claim_gpus(count: int, lock_dir: Path = DEFAULT_LOCK_DIR, poll_seconds: float = 2.0) -> tuple[list[str], list[int]]:
    """Lock `count` free GPUs of the pool; returns their ids and the lock file descriptors (closing them, or the
    process exiting, frees the GPUs). Waits while other jobs on this machine hold them."""
    pool = gpu_pool()
    if count > len(pool):
        raise ConfigError(f"this job needs {count} GPU(s) but this machine offers {len(pool)} "
                          f"({'CUDA_VISIBLE_DEVICES=' + ','.join(pool) if pool else 'none found'}); lower the "
                          f"decoder's resources.gpus in experiments/catalog.yaml or run on a bigger node")
    lock_dir.mkdir(parents=True, exist_ok=True)
    announced = False
    while True:
        held: list[tuple[str, int]] = []
        for gpu in pool:
            fd = os.open(lock_dir / f"gpu{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((gpu, fd))
            if len(held) == count:
                return [g for g, _ in held], [fd for _, fd in held]
        for _, fd in held:
            os.close(fd)
        if not announced:
            print(f"steermoe launch: waiting for {count} free GPU(s) of {','.join(pool)} (held by other jobs on "
                  f"this machine; locks in {lock_dir})", file=sys.stderr, flush=True)
            announced = True
        time.sleep(poll_seconds)


def launch_command(command: list[str], gpus: int, port: int) -> list[str]:
    """The command line to run: several GPUs go through the DeepSpeed launcher, which starts one process per
    visible GPU (no --num_gpus: that would make it ignore CUDA_VISIBLE_DEVICES)."""
    if gpus <= 1:
        return command
    program = shutil.which(command[0]) or command[0]  # a console script such as `steermoe` is a Python file
    return ["deepspeed", "--master_port", str(port), program, *command[1:]]


def threads_per_process(threads: int, gpus: int) -> int:
    """Each process's share of the job's threads: the DeepSpeed launcher starts one process per GPU, and each would
    otherwise run the job's whole thread count (16 x 4 on a 16-CPU job of 4 GPUs)."""
    return max(1, threads // max(1, gpus))


def lock_dir_of_this_job(lock_dir: Path) -> Path:
    """Where this job's GPU locks live. Inside a SLURM allocation the visible GPUs are the allocation's own, and the
    jobs it runs (a local profile inside salloc) share them: their locks are kept per allocation, so that another
    allocation's GPU 0 on the same node (another device) never counts as taken."""
    job = os.environ.get("SLURM_JOB_ID")
    return lock_dir / f"slurm-{job}" if job else lock_dir


def launch(command: list[str], gpus: int, port: int, threads: int | None = None, lock_dir: Path = DEFAULT_LOCK_DIR):
    """Replace this process with `command` on `gpus` GPUs of this machine (0: none visible), each process with its
    share of `threads` (OMP_NUM_THREADS; None: as it is). The command inherits the GPU locks, so they last exactly as
    long as it runs, and receives the job's signals (SIGTERM, SIGUSR1)."""
    if not command:
        raise ConfigError("steermoe launch: no command given (usage: steermoe launch --gpus N -- COMMAND ...)")
    env = dict(os.environ, MASTER_PORT=str(port))
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads_per_process(threads, gpus))
    if gpus > 0:
        claimed, locks = claim_gpus(gpus, lock_dir_of_this_job(lock_dir))
        for fd in locks:
            os.set_inheritable(fd, True)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(claimed)
        print(f"steermoe launch: GPU(s) {','.join(claimed)}", file=sys.stderr, flush=True)
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job must not take a GPU another job was given
    argv = launch_command(command, gpus, port)
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise ConfigError(f"steermoe launch: {argv[0]!r} not found on PATH") from None
