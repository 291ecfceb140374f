"""Evaluation: decode the whole test split, deterministically and batched, and score it honestly.

Writes into the run's evaluation folder (atomically, as one folder):
    predictions.jsonl   one line per utterance: id, reference(s), hypothesis, errors, reference units
    metrics.json        the metric with counts and a 95 % bootstrap CI, real-time factor, decoding settings,
                        checkpoint and config hashes
    steering.json/.png  router usage per layer on the test audio, layer scales, steering-vector norms
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from steermoe import metrics, precision
from steermoe.analysis import GateStats, plot_steering, steering_parameters
from steermoe.errors import ConfigError
from steermoe.data.batching import Collator
from steermoe.features import AudioFeatures
from steermoe.fsutil import replace_dir, write_json
from steermoe.runconfig import RunConfig
from steermoe.train import check_inputs, load_model, load_rows, load_trainable


def shard_of_this_process() -> tuple[int, int]:
    """(rank, world size) under a launcher (torchrun, deepspeed: RANK and WORLD_SIZE set), else (0, 1). Several
    processes join a gloo group (only small Python objects cross it) that gather_to_first uses."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return int(os.environ.get("RANK", "0")), world


def gather_to_first(items: list, world: int) -> list:
    """Every process's items, concatenated, on rank 0 (the others get []); the group is closed afterwards."""
    if world == 1:
        return items
    dist = torch.distributed
    gathered = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(items, gathered, dst=0)
    dist.destroy_process_group()
    return [item for part in gathered for item in part] if gathered else []


def evaluate(run: RunConfig, checkpoint: Path | None = None, output_dir: Path | None = None, log=print,
             device: torch.device | None = None) -> dict:
    """Decode the run's whole test split on `device` (default: the job's GPU, else the CPU) and score it."""
    if run.mode == "train":
        raise ConfigError(f"{run.path} is a training config (its name ends in _train); evaluate with the "
                          f"_test/_eval config")
    ev, top = run.evaluation, run.top
    checkpoint = Path(checkpoint) if checkpoint else run.checkpoint_dir
    output_dir = Path(output_dir) if output_dir else run.eval_dir
    check_inputs(run, ("parquet_dirs",))
    torch.manual_seed(top.seed)
    decision = precision.for_run(run, log)
    model = load_model(run, decision.weights)
    weights_sha = load_trainable(model, checkpoint)
    device = device or precision.job_device()
    model.to(device).eval()
    rows = load_rows(run, top.parquet_dirs, "parquet_dirs")  # the whole split: no filtering at test time
    collate = Collator(AudioFeatures(model.encoder.kind, model.encoder.num_mel_bins, top.encoder_window),
                       top.textual_prompt)
    # longest first: the slowest batch shows up at once, and similar lengths share a batch
    order = sorted(range(len(rows)), key=lambda i: -rows.durations[i])
    batches = [order[first:first + ev.batch_size] for first in range(0, len(order), ev.batch_size)]
    rank, world = shard_of_this_process()
    start, audio_seconds = time.time(), sum(rows.durations)
    mine = range(rank, len(batches), world)
    total, prefix = sum(len(batches[n]) for n in mine), f"[process {rank} of {world}] " if world > 1 else ""
    decoded = []  # (batch number, hypotheses, gate statistics) of this process's batches
    for number in mine:
        batch = collate([rows[i] for i in batches[number]])
        stats = GateStats() if model.steering is not None else None
        with precision.autocast(decision):
            out = model.generate(batch["features"].to(device), batch["feature_lengths"].to(device), batch["prompts"],
                                 max_new_tokens=ev.max_new_tokens, num_beams=ev.num_beams,
                                 repetition_penalty=ev.repetition_penalty, gate_stats=stats)
        decoded.append((number, out, stats))
        done = sum(len(hyps) for _, hyps, _ in decoded)
        log(f"{prefix}decoded {done}/{total} utterances  {time.time() - start:.0f}s")
    decoded = gather_to_first(decoded, world)
    if rank != 0:
        return {}
    decode_seconds = time.time() - start
    hypotheses: dict[int, str] = {}
    stats = GateStats() if model.steering is not None else None
    for number, out, batch_stats in sorted(decoded, key=lambda item: item[0]):  # batch order: sums as in one process
        hypotheses.update(zip(batches[number], out))
        if stats is not None:
            stats.merge(batch_stats)

    ids, refs = rows.columns["id"], rows.columns["text"]
    hyps = [hypotheses[i] for i in range(len(rows))]
    if ev.metric == "qa_accuracy":
        answers = [a if a else [r] for a, r in zip(rows.columns["answers"], refs)]
        score = metrics.score_qa(answers, hyps, seed=top.seed, resamples=ev.bootstrap_resamples)
    else:
        score = metrics.score_asr(refs, hyps, ev.metric, seed=top.seed, resamples=ev.bootstrap_resamples)
    per_utterance = score.pop("per_utterance")
    result = {
        "config": run.name, "config_sha256": run.sha256, "method": run.method, **score,
        "rtf": decode_seconds / audio_seconds, "decode_seconds": round(decode_seconds, 2),
        "audio_seconds": round(audio_seconds, 2),
        "decoding": {"strategy": "greedy" if ev.num_beams == 1 else "beam", "num_beams": ev.num_beams,
                     "max_new_tokens": ev.max_new_tokens, "repetition_penalty": ev.repetition_penalty,
                     "sampling": False, "batch_size": ev.batch_size},
        "checkpoint": str(checkpoint), "checkpoint_sha256": weights_sha,
        "trainable_parameters": sum(p.numel() for p in model.trainable_state_dict().values()),
        **precision.record(decision, device), "processes": world,
        "threads": torch.get_num_threads(),
        **({"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)}
           if device.type == "cuda" else {}),
    }

    building = output_dir.parent / f".{output_dir.name}.partial"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    with open(building / "predictions.jsonl", "w") as handle:
        for i in range(len(rows)):
            line = {"id": ids[i], "reference": refs[i], "hypothesis": hyps[i], **per_utterance[i]}
            if rows.columns["prompt"][i]:
                line["prompt"] = rows.columns["prompt"][i]
            if rows.columns["answers"][i]:
                line["answers"] = rows.columns["answers"][i]
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    write_json(building / "metrics.json", result)
    if stats is not None:
        analysis = {**stats.result(), **steering_parameters(model)}
        write_json(building / "steering.json", analysis)
        plot_steering(analysis, building / "steering.png", title=run.name)
    replace_dir(building, output_dir)
    headline = f"{result['metric']} {result['value']:.4f} (95% CI {result['ci95'][0]:.4f}-{result['ci95'][1]:.4f})"
    log(f"{run.name}: {headline} on {len(rows)} utterances, RTF {result['rtf']:.3f}; written to {output_dir}")
    return result
