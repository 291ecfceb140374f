"""`steermoe status`: one line per experiment of the matrix, read from the files its jobs write (logs/, results/),
so it works while the matrix runs and on a cluster's shared filesystem. Torch-free.

States: done (evaluated with the current configs), stale (evaluated, but a config changed since), failed (the
reason is in the log shown), preparing / training / evaluating (a job's log is growing: its data or models, its
training, its evaluation), stalled (such a log has not moved for 10 minutes), pending (nothing yet), stopped (a
successive halving stopped it and it is not evaluated). A halving cell's line also says its rung, its rank at the
last decision and whether it was kept or stopped; while it trains to a rung, the step is that rung's training's.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from steermoe.declare.experiments import Experiment
from steermoe.declare.halving import RUNNING, halving_states
from steermoe.declare.outputs import log_file, parse_progress_line, rung_log
from steermoe.report.results import ERROR_PREFIX, NOT_RUN, OK, STALE, collect, log_error

QUIET_SECONDS = 600  # a job log untouched this long, with no result and no error, is reported as stalled


@dataclass
class Progress:
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    dev_loss: float | None = None
    seconds: int | None = None  # since this run started, at the last logged step
    seconds_per_step: float | None = None  # from the log's own ETA, which a resumed run counts from its checkpoint


def read_progress(log: Path) -> Progress:
    """The training progress in a train log's `step N/M ... Ts` lines (steermoe.declare.outputs.progress_line)."""
    progress = Progress()
    if not log.is_file():
        return progress
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        parsed = parse_progress_line(line)
        if parsed is None:
            continue
        step, total, fields, seconds, eta = parsed
        if "loss" in fields:
            progress.loss = float(fields["loss"])
        if "eval_loss" in fields:
            progress.dev_loss = float(fields["eval_loss"])
        if eta is not None and total > step:
            progress.seconds_per_step = eta / (total - step)
        progress.step, progress.total, progress.seconds = step, total, seconds
    return progress


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _failed(log: Path) -> bool:
    text = log.read_text(encoding="utf-8", errors="replace")
    return ERROR_PREFIX in text or "Traceback (most recent call last)" in text


def _job_state(log: Path, running: str, now: float) -> str:
    """A job's state from its log: failed (an error in it), running (written to lately), else stalled."""
    if _failed(log):
        return "failed"
    quiet = now - log.stat().st_mtime
    return running if quiet < QUIET_SECONDS else f"stalled {_duration(quiet)}"


def experiment_line(exp: Experiment, results: Path, logs: Path, now: float | None = None,
                    halving: dict | None = None) -> dict:
    """What one experiment is doing: state, step/total, elapsed and ETA of training, losses, metric, log.
    `halving`: its state in a successive halving (steermoe.declare.halving.halving_states)."""
    now = time.time() if now is None else now
    result = collect(exp, results, logs, trained=(halving or {}).get("trained"))
    trainer = str(exp.trained_by or result.id)
    train_log, eval_log = Path(log_file(logs, "train", trainer)), Path(log_file(logs, "evaluate", result.id))
    if halving is not None and halving["status"] == RUNNING:  # training to a rung
        train_log = Path(rung_log(logs, trainer, halving["rung"]))
    progress = read_progress(train_log)
    line = {"experiment": result.id, "state": "pending", "step": progress.step, "total": progress.total,
            "elapsed": progress.seconds, "eta": None, "loss": progress.loss, "dev_loss": progress.dev_loss,
            "metric": "", "log": ""}
    if result.status in (OK, STALE):
        metrics = result.metrics
        line.update(state="done" if result.status == OK else "stale", log=str(eval_log),
                    metric=f"{metrics['metric']} {metrics['value']:.4f}")
    elif (result.summary is not None or not exp.trains) and eval_log.is_file():
        line.update(state=_job_state(eval_log, "evaluating", now), log=str(eval_log))  # a reference row trains nothing
    elif result.summary is not None:
        line.update(state="trained", log=str(eval_log))
    elif train_log.is_file():
        line.update(state=_job_state(train_log, "training", now), log=str(train_log))
        if line["state"] == "training" and progress.seconds_per_step is not None:
            until = halving["step"] if halving is not None else progress.total  # a rung's training stops there
            line["eta"] = progress.seconds_per_step * max(0, until - progress.step)
    elif result.error and result.status != NOT_RUN:  # a step before training (data, models) has a log
        line.update(state=_job_state(Path(result.log), "preparing", now), log=result.log)
    if line["state"] == "failed":
        line["metric"] = (result.error or log_error(Path(line["log"])) or "")[:70]
    if halving is not None:
        if not halving["evaluated"]:
            line.update(state="stopped", log=rung_log(logs, trainer, halving["rung"]))
        rank = f", rank {halving['rank']}/{halving['of']}" if halving["rank"] else ""
        line["metric"] = " ".join(part for part in (line["metric"], f"[{halving['status']}: rung {halving['rung']}"
                                                    f"{rank}]") if part)
    return line


def format_lines(lines: list[dict]) -> str:
    width = max([len("experiment"), *(len(x["experiment"]) for x in lines)]) + 2
    header = (f"{'experiment':<{width}}{'state':<12}{'step':>11}  {'elapsed':>7}  {'ETA':>7}  {'loss':>7}  {'dev':>7}  "
              f"metric / log")
    rows = [header]
    for x in lines:
        step = f"{x['step']}/{x['total']}" if x["step"] is not None else "-"
        loss = f"{x['loss']:.3f}" if x["loss"] is not None else "-"
        dev = f"{x['dev_loss']:.3f}" if x["dev_loss"] is not None else "-"
        tail = "  ".join(part for part in (x["metric"], x["log"]) if part)
        rows.append(f"{x['experiment']:<{width}}{x['state']:<12}{step:>11}  {_duration(x['elapsed']):>7}  "
                    f"{_duration(x['eta']):>7}  {loss:>7}  {dev:>7}  {tail}")
    counts = Counter(x["state"].split()[0] for x in lines)  # "stalled 12m00s" counts as stalled
    rows.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(rows)


def status(experiments: list[Experiment], results: Path, logs: Path, halvings: dict | None = None) -> str:
    states = halving_states(halvings or {}, experiments, str(results))
    return format_lines([experiment_line(exp, results, logs, halving=states.get(exp.id)) for exp in experiments])


def watch(read, every: float, out=print) -> None:
    """Redraw `read()` every `every` seconds until interrupted (Ctrl-C ends it quietly)."""
    try:
        while True:
            out("\033[2J\033[H" + read() + f"\n(every {every:g} s; Ctrl-C to stop)", flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        pass
