"""The plan view: what each experiment of the matrix will train and cost, before anything runs.

Per experiment: trainable parameters (the model built on the meta device from the catalog's model folder, else a
shipped shape of the same name: no weights needed), and an estimate of the training compute in FLOPs and in
GPU-hours at a stated utilisation of a stated peak (default 40 % of an H100's 989 TFLOP/s bf16 dense), and the GPU
memory per GPU. The compute model is steermoe.report.cost's, the memory model steermoe.report.memory's.

Dataset statistics (mean duration, training utterances, prompt and target lengths) are steermoe.data.statistics'.
Token counts use the decoder's tokenizer when its folder exists, else about 4 UTF-8 bytes per token. Every row says
where its numbers came from.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from steermoe.data.statistics import dataset_stats
from steermoe.declare.experiments import Experiment
from steermoe.declare.model_config import encoder_frames
from steermoe.declare.settings import MODEL_OPTIONS, REFERENCE, SETTINGS, WHISPER_WINDOW, default_loader_workers
from steermoe.declare.shapes import parameter_count, shape_source
from steermoe.errors import ConfigError
from steermoe.report.cost import Shape, model_shape, training_steps, utterance_flops
from steermoe.report.memory import (FALLBACK_MEM_MB, GIB, H100_MEMORY_GIB, gib, host_memory, mem_mb_request,
                                    too_small, training_memory)

H100_BF16_TFLOPS = 989.0
DEFAULT_UTILIZATION = 0.4
CHAT_TEMPLATE_TOKENS = 32  # prompt_format chat without a tokenizer at hand: a typical template's extra tokens
BYTES_PER_TOKEN = 4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def setting(exp: Experiment, name: str):
    """The experiment's merged setting, else its default (steermoe.declare.settings)."""
    settings = exp.settings or {}
    if settings.get(name) is not None:
        return settings[name]
    if name in (exp.overrides or {}):
        return exp.overrides[name]
    return SETTINGS[name].default


def model_config(exp: Experiment) -> dict:
    """The experiment's SteerMoEConfig options (those that change shapes, parameter counts or compute among them)."""
    options = {option: setting(exp, key.setting) for option, key in MODEL_OPTIONS.items() if key.setting}
    return {"method": exp.method, **options}


# ---------------------------------------------------------------- tokens

@lru_cache(maxsize=None)
def _tokenizer(path: str | None):
    if path is None or not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception:  # no tokenizer files: fall back to the byte estimate
        return None


def count_tokens(texts: list[str], tokenizer) -> list[int]:
    if tokenizer is None:
        return [math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]


def prompt_tokens(prompts: list[str], tokenizer, prompt_format: str) -> list[int]:
    """Decoder tokens around the audio: the raw prompt, or the chat template with the prompt in the user turn."""
    if prompt_format != "chat":
        return count_tokens(prompts, tokenizer)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return [n + CHAT_TEMPLATE_TOKENS for n in count_tokens(prompts, tokenizer)]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    return count_tokens(texts, tokenizer)


# ---------------------------------------------------------------- the plan

def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def _deepspeed_zero(exp: Experiment) -> dict:
    """The experiment's DeepSpeed JSON's zero_optimization ({} without DeepSpeed)."""
    from steermoe.declare.runconfig import shipped_deepspeed

    if not setting(exp, "use_deepspeed"):
        return {}
    try:
        path = Path(shipped_deepspeed(setting(exp, "deepspeed_config") or "stage2_simple"))
        return json.loads(path.read_text()).get("zero_optimization", {})
    except (OSError, ValueError):
        return {"stage": 2}  # the default's stage where the user's JSON cannot be read here


def _half_precision(exp: Experiment) -> bool:
    return bool(setting(exp, "fp16")) or setting(exp, "bf16") in (True, "auto")


def _weights_bytes(exp: Experiment) -> int:
    """Bytes per parameter of the frozen LLM without DeepSpeed: its dtype, else the precision's."""
    return {"float32": 4, "bfloat16": 2, "float16": 2}.get(setting(exp, "dtype"), 2 if _half_precision(exp) else 4)


def gpu_memory(exp: Experiment, shape: Shape, method: str, frames: int, decoder_tokens: float, head_tokens: float,
               batch: int, devices: int) -> dict[str, float]:
    """The experiment's training memory per GPU by part (steermoe/report/memory.py), in the regime a GPU job runs: bf16
    unless the config says otherwise, its DeepSpeed JSON's ZeRO stage and offloads."""
    zero = _deepspeed_zero(exp)
    return training_memory(
        method=method, encoder_parameters=shape.encoder_parameters, decoder_parameters=shape.decoder_parameters,
        trainable=shape.trainable["trainable"], encoder_width=shape.encoder_width,
        encoder_layers=shape.encoder_layers, frames=frames, decoder_hidden=shape.decoder_hidden,
        decoder_layers=shape.decoder_layers, decoder_tokens=decoder_tokens, head_tokens=head_tokens,
        vocab_size=shape.vocab_size, batch=batch, devices=devices, half_precision=_half_precision(exp),
        weights_bytes=_weights_bytes(exp), zero_stage=int(zero.get("stage", 0)) if zero else 0,
        offload_optimizer="offload_optimizer" in zero, offload_parameters="offload_param" in zero,
        gradient_checkpointing=bool(setting(exp, "gradient_checkpointing")))


def job_host_memory(exp: Experiment, *, encoder_parameters: int, decoder_parameters: int, trainable: int,
                    rows: int) -> dict[str, float]:
    """The training job's host memory (steermoe/report/memory.py): one process per GPU, each with the loader
    workers it gets (steermoe/run/batching.py's rule, from the job's threads per process)."""
    from steermoe.declare.catalog import RESOURCE_DEFAULTS

    resources = {**RESOURCE_DEFAULTS, **(exp.resources or {})}
    devices = max(1, int(resources["gpus"] or 1))
    stated = setting(exp, "dataloader_num_workers")
    workers = stated if stated is not None else default_loader_workers(int(resources["threads"]) // devices,
                                                                       bool(resources["gpus"]))
    return host_memory(encoder_parameters=encoder_parameters, decoder_parameters=decoder_parameters,
                       weights_bytes=_weights_bytes(exp), trainable=trainable, rows=rows, workers=workers,
                       processes=devices, gpu=bool(resources["gpus"]),
                       offload_optimizer="offload_optimizer" in _deepspeed_zero(exp))


def estimated_host_memory(exp: Experiment, root: Path = Path(".")) -> dict[str, float] | None:
    """job_host_memory without torch, while the Snakefile parses: parameter counts from the shipped shapes or the
    folders' safetensors headers (steermoe.declare.shapes), training rows without reading texts. The trainable
    parameters (an offloaded optimiser's share, some hundred MB for SteerMoE's) are left to the margin. None where
    a model's parameter count is unknown."""
    counts = []
    for entry, name, encoder in ((exp.encoder_entry, exp.encoder, True), (exp.decoder_entry, exp.decoder, False)):
        source, _ = shape_source(entry or {"name": name}, root)
        counts.append(parameter_count(source, encoder) if source else None)
    if None in counts:
        return None
    stats = dataset_stats(exp.dataset_entry or {}, exp.data_dir, (exp.parquet or {}).get("train") or [], root,
                          texts=False)
    return job_host_memory(exp, encoder_parameters=counts[0], decoder_parameters=counts[1], trainable=0,
                           rows=stats.n_train or 0)


def request_memory(experiments: list[Experiment], root: Path = Path(".")) -> None:
    """Each job's mem_mb, in its resources: the catalog's figure, refused (ConfigError) where it cannot hold the
    job's host memory estimate, else the estimate with its margin, else (models of unknown size) a fixed figure;
    and, where the estimate is known and eval_mem_mb is not stated, an evaluation's (one process's estimate). The
    workflow calls it while the Snakefile parses, before anything is submitted."""
    for exp in experiments:
        stated = exp.resources.get("mem_mb") if exp.mem_mb_from else None
        host = None if exp.method == REFERENCE else estimated_host_memory(exp, root)
        if host is None:
            exp.resources["mem_mb"] = FALLBACK_MEM_MB if stated is None else stated
            continue
        short = stated is not None and too_small(stated, host, max(1, int(exp.resources.get("gpus") or 1)))
        if short:
            raise ConfigError(f"{exp.mem_mb_from}: experiment {exp.id}: {short}, or remove it (by default a job "
                              f"asks for its estimate and a quarter more)")
        exp.resources["mem_mb"] = mem_mb_request(host["job"]) if stated is None else stated
        exp.resources.setdefault("eval_mem_mb", mem_mb_request(host["per_process"]))


def plan_experiment(exp: Experiment, root: Path = Path("."), quick: bool = False, peak_tflops: float = H100_BF16_TFLOPS,
                    utilization: float = DEFAULT_UTILIZATION, gpu_memory_gib: float = H100_MEMORY_GIB) -> dict:
    method = exp.method
    row = {"experiment": exp.id, "method": method, "encoder": exp.encoder,
           "decoder": exp.decoder, "dataset": exp.dataset, "notes": []}
    if method == REFERENCE:  # nothing trained: no training compute
        return {**row, **dict.fromkeys(CSV_COLUMNS[5:-1]), "trainable_parameters": 0, "gradient_accumulation_steps": 1,
                "devices": 1, "steps": 0, "flops": 0, "gpu_hours": 0.0, "encoder_shape": exp.encoder,
                "decoder_shape": "the encoder model's own", "data_source": "-", "token_counts": "-",
                "notes": ["reference: decodes with the encoder model's own decoder, untrained"]}
    enc_source, enc_label = shape_source(exp.encoder_entry or {"name": exp.encoder}, root)
    dec_source, dec_label = shape_source(exp.decoder_entry or {"name": exp.decoder}, root)
    row.update(encoder_shape=enc_label, decoder_shape=dec_label)
    config = model_config(exp)
    shape = None
    row["trainable_parameters"] = None
    if enc_source and dec_source:
        try:
            shape = model_shape(enc_source, dec_source, json.dumps(config, sort_keys=True))
        except (ValueError, OSError, KeyError) as err:  # ConfigError and ModelFolderError are among these
            row["notes"].append(f"cannot build the model: {err}")
        else:
            row["trainable_parameters"] = shape.trainable["trainable"]
            row["parameter_groups"] = {k: v for k, v in shape.trainable.items() if k != "trainable"}
    else:
        row["notes"].append("model shape unknown: give the catalog entry a local folder or a shipped shape name")

    stats = dataset_stats(exp.dataset_entry or {}, exp.data_dir, (exp.parquet or {}).get("train") or [], root, quick)
    row["data_source"] = stats.source
    batch, accumulation = setting(exp, "batch_size"), setting(exp, "gradient_accumulation_steps")
    devices = max(1, int((exp.resources or {}).get("gpus") or 1))
    steps = training_steps(stats.n_train, batch, accumulation, setting(exp, "epochs"), setting(exp, "max_steps"),
                           devices)
    row.update(train_utterances=stats.n_train, mean_seconds=stats.mean_seconds, batch_size=batch,
               gradient_accumulation_steps=accumulation, devices=devices, steps=steps)
    if steps is None:
        row["notes"].append("training steps unknown: prepare the corpus or set max_steps")

    tokenizer = _tokenizer(dec_source if dec_source and Path(dec_source).is_dir() else None)
    row["token_counts"] = "decoder tokenizer" if tokenizer is not None else f"~{BYTES_PER_TOKEN} bytes per token"
    prompt = setting(exp, "textual_prompt")
    if stats.targets:
        targets = _mean(count_tokens(stats.targets, tokenizer))
        prompts = [prompt + q for q in stats.questions] if stats.questions else [prompt]
        prompt_len = _mean(prompt_tokens(prompts, tokenizer, setting(exp, "prompt_format")))
    elif stats.target_bytes is not None:
        targets = stats.target_bytes / BYTES_PER_TOKEN
        prompt_len = _mean(prompt_tokens([prompt], tokenizer, setting(exp, "prompt_format"))) + \
            (stats.question_bytes or 0) / BYTES_PER_TOKEN
    else:
        targets = prompt_len = None
    row.update(prompt_tokens=prompt_len, target_tokens=targets)

    row.update(encoder_frames=None, audio_tokens=None, decoder_tokens=None, flops_per_utterance=None,
               flops_per_step=None, flops=None, gpu_hours=None, gpu_memory_gib=None)
    if shape is None or stats.mean_seconds is None or targets is None:
        if stats.mean_seconds is None or targets is None:
            row["notes"].append("utterance lengths unknown: prepare the corpus first")
        return row
    whole_window = config["encoder_window"] == WHISPER_WINDOW and shape.encoder_kind == "whisper"
    frames = encoder_frames(stats.mean_seconds, shape.frames_per_second, shape.max_frames if whole_window else None)
    lengths, parts = utterance_flops(shape, config, frames, prompt_len, targets,
                                     gradient_checkpointing=bool(setting(exp, "gradient_checkpointing")))
    audio, decoder_tokens = lengths["audio_tokens"], lengths["decoder_tokens"]
    per_step = parts["total"] * batch * accumulation * devices
    row.update(encoder_frames=frames, audio_tokens=audio, decoder_tokens=decoder_tokens,
               flops_per_utterance=parts, flops_per_step=per_step)
    if exp.trained_by:  # an evaluation variant: another experiment's training is its model
        row["notes"].append(f"evaluates the model of {exp.trained_by}: no training of its own")
        row["flops"], row["gpu_hours"] = 0, 0.0
        return row
    if steps is not None:
        row["flops"] = per_step * steps
        row["gpu_hours"] = row["flops"] / (peak_tflops * 1e12 * utilization) / 3600
    memory = gpu_memory(exp, shape, method, frames, decoder_tokens, targets + 1, batch, devices)
    row.update(gpu_memory_gib=gib(memory["total"]), gpu_memory_parts={k: gib(v) for k, v in memory.items()})
    if memory["total"] > gpu_memory_gib * GIB:
        shown = ", ".join(f"{k} {gib(v):g}" for k, v in memory.items() if k != "total")
        row["notes"].append(f"needs about {gib(memory['total']):g} GiB per GPU ({shown}), more than a "
                            f"{gpu_memory_gib:g} GiB GPU holds: lower batch_size (raise gradient_accumulation_steps "
                            f"to keep the batch), set gradient_checkpointing, or use ZeRO-3 over more GPUs")
    host = job_host_memory(exp, encoder_parameters=shape.encoder_parameters,
                           decoder_parameters=shape.decoder_parameters, trainable=shape.trainable["trainable"],
                           rows=stats.n_train or 0)
    row.update(host_memory_gib=gib(host["job"]), host_memory_parts={k: gib(v) for k, v in host.items()},
               mem_mb=(exp.resources or {}).get("mem_mb"), suggested_mem_mb=mem_mb_request(host["job"]))
    short = row["mem_mb"] is not None and too_small(row["mem_mb"], host, devices)
    if short:
        row["notes"].append(short)
    return row


def plan(experiments: list[Experiment], *, root: Path | str = ".", quick: bool = False,
         peak_tflops: float = H100_BF16_TFLOPS, utilization: float = DEFAULT_UTILIZATION,
         gpu_memory_gib: float = H100_MEMORY_GIB) -> list[dict]:
    """One plan row per experiment (matrix order)."""
    if not 0 < utilization <= 1:
        raise ConfigError(f"--utilization: must be in (0, 1], got {utilization}")
    if peak_tflops <= 0:
        raise ConfigError(f"--peak-tflops: must be positive, got {peak_tflops}")
    if gpu_memory_gib <= 0:
        raise ConfigError(f"--gpu-memory: must be positive, got {gpu_memory_gib}")
    return [plan_experiment(e, Path(root), quick, peak_tflops, utilization, gpu_memory_gib) for e in experiments]


def seed_advice(experiments: list[Experiment]) -> list[dict]:
    """Per group that compares trained rows: its seeds per row, what its verdicts' intervals cover, and the margin
    that training variance (as measured on the embedded default) puts on a difference at that many seeds, at 3 and
    at 5."""
    from steermoe.report.seeds import DEFAULT_DIFFERENCE_SD_POINTS, seeds_per_group, training_margin
    from steermoe.report.tables import interval_covers

    advice = []
    for group, seeds in seeds_per_group(experiments).items():
        margins = {n: round(training_margin(n), 1) for n in sorted({seeds, 3, 5})}
        shown = ", ".join(f"±{m:g} points at {n} seed{'s' * (n > 1)}" for n, m in margins.items())
        advice.append({"group": group, "seeds": seeds, "interval_covers": interval_covers(seeds),
                       "margin_points": margins,
                       "text": f"group {group}: {seeds} seed{'s' * (seeds > 1)} per trained row, so its intervals "
                               f"cover {interval_covers(seeds)}. Training variance alone puts about {shown} per "
                               f"row on a difference (from the embedded default's layer_wise - linear WER, sd "
                               f"{DEFAULT_DIFFERENCE_SD_POINTS:g} points over seeds, RESULTS.md); a `seeds` column "
                               f"or key adds seeds"})
    return advice


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "unknown"
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


CSV_COLUMNS = ("experiment", "method", "encoder", "decoder", "dataset", "trainable_parameters", "encoder_frames",
               "audio_tokens", "decoder_tokens", "batch_size", "gradient_accumulation_steps", "devices", "steps",
               "flops_per_step", "flops", "gpu_hours", "gpu_memory_gib", "host_memory_gib", "mem_mb", "notes")


def plan_csv(rows: list[dict]) -> str:
    """The plan as CSV (results/plan.csv), one row per experiment."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        notes = [f"encoder {r['encoder_shape']}", f"decoder {r['decoder_shape']}", *r["notes"]]
        writer.writerow(["" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS[:-1]] + ["; ".join(notes)])
    return buffer.getvalue()


def halving_plan(halvings: dict, rows: list[dict]) -> list[dict]:
    """Per successive halving: the GPU-hours of its cells' full grid and of its schedule, worst and expected case
    (steermoe.declare.halving.halving_hours), and the share of the grid they spend."""
    from steermoe.declare.halving import halving_hours

    hours = {r["experiment"]: r["gpu_hours"] for r in rows}
    plans = []
    for group, halving in halvings.items():
        trainings = [e.id for exps in halving.cells.values() for e in exps]
        if any(hours.get(i) is None for i in trainings):
            plans.append({"group": group, "text": f"group {group}: successive halving; GPU-hours unknown (a cell "
                                                  f"has no estimate)"})
            continue
        cost = halving_hours(halving, hours)
        counts = " -> ".join(map(str, cost["cells_per_rung"]))
        share = {k: cost[k] / cost["full_grid"] if cost["full_grid"] else 0.0 for k in ("worst", "expected")}
        plans.append({"group": group, **cost, "text":
                      f"group {group}: successive halving, {counts} cells at rungs "
                      f"{', '.join(f'{r:g}' for r in halving.rungs)} of their steps, keeping {halving.keep:g} by "
                      f"{halving.by}: {cost['expected']:.3g} GPU-hours expected ({100 * share['expected']:.0f} % of "
                      f"the full grid's {cost['full_grid']:.3g}), {cost['worst']:.3g} at worst (the costliest cells "
                      f"kept, {100 * share['worst']:.0f} %); the group's baseline and reference rows run in full"})
    return plans


def format_plan(rows: list[dict], peak_tflops: float = H100_BF16_TFLOPS,
                utilization: float = DEFAULT_UTILIZATION, advice: list[dict] = (), halving: list[dict] = ()) -> str:
    width = max([len("experiment"), *(len(r["experiment"]) for r in rows)]) + 2
    header = (f"{'experiment':<{width}}{'trainable':>12}{'frames':>8}{'audio':>7}{'dec.tok':>8}{'batch':>9}{'steps':>8}"
              f"{'FLOP/step':>12}{'FLOP total':>12}{'GPU-h':>9}{'GiB/GPU':>9}{'host GiB':>10}{'mem_mb':>9}")
    lines = [header]
    for r in rows:
        def num(value, fmt="{:,}"):
            return "?" if value is None else fmt.format(value)

        gpu = "?" if r["gpu_hours"] is None else (f"{r['gpu_hours']:.3g}")
        batch = "-" if r["batch_size"] is None else f"{r['batch_size']}" + (
            f"x{r['gradient_accumulation_steps']}" if r["gradient_accumulation_steps"] > 1 else "") + (
            f"x{r['devices']}" if r["devices"] > 1 else "")
        lines.append(f"{r['experiment']:<{width}}{num(r['trainable_parameters']):>12}{num(r['encoder_frames']):>8}"
                     f"{num(r['audio_tokens']):>7}{num(r['decoder_tokens'], '{:.0f}'):>8}{batch:>9}"
                     f"{num(r['steps']):>8}{_si(r['flops_per_step']) if r['flops_per_step'] else '?':>12}"
                     f"{_si(r['flops']) if r['flops'] else '?':>12}{gpu:>9}"
                     f"{num(r.get('gpu_memory_gib'), '{:g}'):>9}{num(r.get('host_memory_gib'), '{:g}'):>10}"
                     f"{num(r.get('mem_mb'), '{}'):>9}")
    lines.append("")
    lines.append(f"GPU-hours at {100 * utilization:g} % of {peak_tflops:g} TFLOP/s"
                 + (" (H100 bf16 dense)" if peak_tflops == H100_BF16_TFLOPS else "")
                 + "; training only (no dev evaluation, no test decoding). Per-utterance sizes are means; "
                 "batch: per device [x gradient accumulation] [x devices]. GiB/GPU: training memory per GPU in a "
                 "GPU job's regime (bf16 unless set otherwise; the DeepSpeed JSON's ZeRO stage and offloads) at the "
                 "mean utterance. host GiB: the job's host memory (all its processes); mem_mb: what the job asks "
                 "for (by default the estimate and a quarter more).")
    for r in rows:
        notes = [f"encoder {r['encoder_shape']}", f"decoder {r['decoder_shape']}", f"data: {r['data_source']}",
                 f"tokens: {r['token_counts']}", *r["notes"]]
        lines.append(f"{r['experiment']}: " + "; ".join(notes))
    total = sum(r["gpu_hours"] for r in rows if r["gpu_hours"] is not None)
    lines.append(f"total: {total:.3g} GPU-hours over {sum(r['gpu_hours'] is not None for r in rows)} of "
                 f"{len(rows)} experiments with an estimate")
    lines += [f"seeds: {a['text']}" for a in advice]
    lines += [f"halving: {h['text']}" for h in halving]
    return "\n".join(lines)

