"""A stand-in `steermoe` command for fast workflow tests: the Snakemake DAG, re-run semantics and launch logic
are tested without training anything. `render` (a train or evaluate job's first step: it writes the job's config),
`launch` and `decide` (a successive halving's decision, from the rung folders) run the real command, so the configs
are the real ones and the stub reads them with the real loader; every other subcommand writes its rule's outputs (a
halving rung's training: a dev loss made up from its config's name and the step).

Each call is appended to $STEERMOE_STUB_LOG as one JSON line: {"command": ..., "target": ...}.
$STEERMOE_STUB_FAIL: a substring; a train call whose config path contains it writes a checkpoint, then fails.
"""
import json
import os
import sys
from pathlib import Path


def _arg(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def _record(command, target):
    log = os.environ.get("STEERMOE_STUB_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"command": command, "target": target}) + "\n")


def main(argv):
    if argv[0] in ("render", "launch", "decide"):
        from steermoe.cli import main as real

        return real(argv)
    from steermoe.declare.runconfig import load_run_config

    command = " ".join(argv[:2]) if argv[0] in ("data", "models") else argv[0]
    if command == "train":
        config = _arg(argv, "--config")
        _record(command, Path(config).parent.name)
        run = load_run_config(config)
        if os.environ.get("STEERMOE_STUB_FAIL") and os.environ["STEERMOE_STUB_FAIL"] in config:
            checkpoint = Path(run.training.output_dir) / "checkpoint-1"  # as if killed after a checkpoint
            checkpoint.mkdir(parents=True, exist_ok=True)
            (checkpoint / "complete.json").write_text("{}\n")
            print("stub: training failed on purpose", file=sys.stderr)
            return 1
        if "--until-step" in argv:  # a halving rung: a made-up dev loss, from the config and the step
            import zlib

            step, rung = int(_arg(argv, "--until-step")), Path(_arg(argv, "--rung-dir"))
            rung.mkdir(parents=True, exist_ok=True)
            (rung / "model.safetensors").write_text("stub weights\n")
            dev_loss = zlib.crc32(f"{Path(config).name} {step}".encode()) / 2 ** 32
            (rung / "train_summary.json").write_text(json.dumps({"steps": step, "dev_loss": dev_loss}) + "\n")
            return 0
        final = Path(run.training.output_dir) / "final"
        final.mkdir(parents=True, exist_ok=True)
        (final / "model.safetensors").write_text("stub weights\n")
        (final / "steermoe.json").write_text(json.dumps({"config_sha256": run.sha256}) + "\n")
        (final / "train_summary.json").write_text(json.dumps({"steps": run.training.max_steps}) + "\n")
    elif command == "evaluate":
        config = _arg(argv, "--config")
        _record(command, Path(config).parent.name)
        run = load_run_config(config)
        out = run.eval_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps({"metric": run.evaluation.metric, "value": 0.5}) + "\n")
        (out / "predictions.jsonl").write_text("{}\n")
    elif command in ("data synth", "data prepare"):
        out = Path(_arg(argv, "--out"))
        _record(command, out.name)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"argv": argv}) + "\n")
    elif command == "models import":
        dest, name = Path(_arg(argv, "--dest")), _arg(argv, "--only")
        _record(command, name)
        (dest / name).mkdir(parents=True, exist_ok=True)
        (dest / name / "steermoe_import.json").write_text("{}\n")
    elif command == "plan":
        out = Path(_arg(argv, "--csv"))
        _record(command, str(out))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("experiment,steps\n")
    elif command == "aggregate":
        out = Path(_arg(argv, "--out"))
        _record(command, str(out))
        (out / "plots").mkdir(parents=True, exist_ok=True)
        (out / "table.csv").write_text("experiment,status\n")
        (out / "comparisons.csv").write_text("group\n")
        (out / "plots" / "stub.png").write_bytes(b"")
    else:
        print(f"stub: unexpected command {argv}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
