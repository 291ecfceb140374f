"""Evaluation: decode the test split, batched, and score it under the config's protocol (steermoe/declare/protocols.py):
`honest` (the whole split, deterministic decoding, normalised scores) or `seed` (the original code's evaluation).
The decoder is the trained SteerMoE model, or for a reference row the encoder's own model (steermoe/model/reference.py);
both share the batching, sharding, scoring and writing.

Writes into the run's evaluation folder (atomically, as one folder):
    predictions.jsonl   one line per utterance: id, reference(s), hypothesis, errors, reference units
    metrics.json        the metric with counts and a 95 % bootstrap CI, real-time factor, decoding settings,
                        checkpoint and config hashes (a reference row: no checkpoint; its model and language)
    steering.json/.png  router usage per layer on the test audio, layer scales, steering-vector norms (steered
                        methods only)
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader

from steermoe import metrics
from steermoe.data.layout import dropped_at_preparation
from steermoe.declare.outputs import METRICS_FILE, PREDICTIONS_FILE, STEERING_FILE, STEERING_PLOT, WEIGHTS
from steermoe.declare.protocols import ORIGINAL_SAMPLING, ORIGINAL_SUBSET, original_subset
from steermoe.declare.runconfig import RunConfig
from steermoe.declare.settings import REFERENCE
from steermoe.errors import ConfigError
from steermoe.fsutil import replace_dir, storage_errors, write_json
from steermoe.model.analysis import GateStats, plot_steering, steering_parameters
from steermoe.model.features import WHISPER_SECONDS, AudioFeatures
from steermoe.model.reference import DECODER as REFERENCE_DECODER, WhisperReference, language_plan
from steermoe.run import precision, tracking
from steermoe.run.batching import AudioRows, AudioWindows, Collator, loader_options, loader_workers
from steermoe.run.checkpoint import check_weights_file, load_trainable
from steermoe.run.loading import check_inputs, load_model, load_rows


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


def preflight(run: RunConfig, checkpoint: Path | None = None) -> None:
    """Everything evaluation checks before any weights load (`steermoe check` runs it too): the config, its inputs,
    and the trained weights' file where it exists already (before training it does not)."""
    if run.mode == "train":
        raise ConfigError(f"{run.path} is a training config (its name ends in _train); evaluate with the "
                          f"_test/_eval config")
    check_inputs(run, ("parquet_dirs",))
    tracking.check_tracker(run)
    if run.method != REFERENCE:  # a reference row loads no trained weights
        weights = Path(checkpoint or run.checkpoint_dir) / WEIGHTS
        if weights.exists():
            check_weights_file(weights)


@dataclass
class Decoder:
    """What a test split is decoded with, and what metrics.json says of it."""
    collate: Callable[[list[dict]], dict]  # rows -> a batch
    generate: Callable[[dict, GateStats | None], list[str]]  # (batch, gate statistics to add to) -> hypotheses
    record: dict  # checkpoint and its SHA-256, trainable parameters (a reference row: its model and language)
    longest_seconds: float  # longer utterances are decoded in windows (the encoder's window, the prompt's limit)
    steered: torch.nn.Module | None = None  # the SteerMoE model whose steering is analysed; None: none


def steermoe_decoder(run: RunConfig, checkpoint: Path, decision: precision.Decision, device: torch.device) -> Decoder:
    """The SteerMoE model: frozen parts from their folders, trained weights from `checkpoint`. The original protocol
    samples with the original code's settings."""
    ev, top = run.evaluation, run.top
    model = load_model(run, decision.weights)
    weights_sha = load_trainable(model, checkpoint)
    model.to(device).eval()
    original_protocol = ev.protocol == "original"
    sampling = {k: v for k, v in ORIGINAL_SAMPLING.items() if k != "repetition_penalty"} if original_protocol else None
    repetition_penalty = ORIGINAL_SAMPLING["repetition_penalty"] if original_protocol else ev.repetition_penalty

    def generate(batch: dict, stats: GateStats | None) -> list[str]:
        with precision.autocast(decision):
            return model.generate(batch["features"].to(device), batch["feature_lengths"].to(device), batch["prompts"],
                                  max_new_tokens=ev.max_new_tokens, num_beams=ev.num_beams,
                                  repetition_penalty=repetition_penalty, sampling=sampling, gate_stats=stats)

    return Decoder(
        Collator(AudioFeatures(model.encoder.kind, model.encoder.num_mel_bins, top.encoder_window), top.textual_prompt),
        generate,
        {"checkpoint": str(checkpoint), "checkpoint_sha256": weights_sha,
         "trainable_parameters": sum(p.numel() for p in model.trainable_state_dict().values())},
        model.longest_audio_seconds(), model if model.steering is not None else None)


def reference_decoder(run: RunConfig, rows: AudioRows, decision: precision.Decision, device: torch.device) -> Decoder:
    """The encoder's own model (Whisper's decoder), untrained: no checkpoint, nothing steered, its weights in the
    precision policy's dtype."""
    ev, folder = run.evaluation, run.resolve(run.encoder.model_path)
    whisper = WhisperReference(folder, getattr(torch, decision.weights), device)
    in_their_languages, language = language_plan(whisper.multilingual, rows.columns["language"], rows.source)

    def generate(batch: dict, _stats) -> list[str]:
        with precision.autocast(decision):
            return whisper.transcribe(batch, in_their_languages, ev.max_new_tokens, ev.num_beams,
                                      ev.repetition_penalty)

    return Decoder(whisper.collate, generate,
                   {"checkpoint": None, "checkpoint_sha256": None, "decoder": REFERENCE_DECODER,
                    "reference_model": str(folder), "language": language, "trainable_parameters": 0},
                   WHISPER_SECONDS)


def decode_split(decoder: Decoder, windows: AudioWindows, passes: int, reseed: bool, batch_size: int, workers: int,
                 log) -> tuple[list[dict[int, str]], GateStats | None, float, int] | None:
    """Decode every window, `passes` times, in batches shared out among the launcher's processes (each batch made by
    `workers` loader processes while the previous one decodes). On process 0: per pass {window: hypothesis}, the gate
    statistics of the first pass, the decoding seconds and the process count; None on the others. reseed: seed torch
    per batch (sampling draws that do not depend on the sharing)."""
    # longest first: the slowest batch shows up at once, and similar lengths share a batch
    order = sorted(range(len(windows)), key=lambda i: -windows.durations[i])
    batches = [order[first:first + batch_size] for first in range(0, len(order), batch_size)]
    work = [(sampling_seed, number) for sampling_seed in range(passes) for number in range(len(batches))]
    rank, world = shard_of_this_process()
    start = time.time()
    mine = range(rank, len(work), world)
    total, prefix = sum(len(batches[work[w][1]]) for w in mine), f"[process {rank} of {world}] " if world > 1 else ""
    decoded = []  # (work item, hypotheses, gate statistics) of this process's batches
    loader = DataLoader(windows, batch_sampler=[batches[work[item][1]] for item in mine], collate_fn=decoder.collate,
                        **loader_options(workers))
    for item, batch in zip(mine, loader):
        sampling_seed, number = work[item]
        stats = GateStats() if decoder.steered is not None and sampling_seed == 0 else None
        if reseed:  # each batch's own draws: the same hypotheses however the batches are shared out
            torch.manual_seed(sampling_seed * 1_000_003 + number)
        decoded.append((item, decoder.generate(batch, stats), stats))
        done = sum(len(hyps) for _, hyps, _ in decoded)
        log(f"{prefix}decoded {done}/{total} utterances  {time.time() - start:.0f}s")
    decoded = gather_to_first(decoded, world)
    if rank != 0:
        return None
    decode_seconds = time.time() - start
    hypotheses: list[dict[int, str]] = [{} for _ in range(passes)]  # per pass: row -> hypothesis
    stats = GateStats() if decoder.steered is not None else None
    for item, out, batch_stats in sorted(decoded, key=lambda entry: entry[0]):  # work order: sums as in one process
        sampling_seed, number = work[item]
        hypotheses[sampling_seed].update(zip(batches[number], out))
        if stats is not None and batch_stats is not None:
            stats.merge(batch_stats)
    return hypotheses, stats, decode_seconds, world


def score_and_write(run: RunConfig, rows: AudioRows, chosen: list[int], hypotheses: list[dict[int, str]],
                    decode_seconds: float, model_record: dict, analysis: dict | None, output_dir: Path, log) -> dict:
    """Score the hypotheses under the run's protocol and write the evaluation folder (atomically); returns
    metrics.json's content. model_record: what metrics.json says of the model, the precision and the device."""
    ev, top = run.evaluation, run.top
    original_protocol, passes = ev.protocol == "original", len(hypotheses)
    ids, refs = rows.columns["id"], rows.columns["text"]
    answers = [a if a else [r] for a, r in zip(rows.columns["answers"], refs)]
    hyps = [hypotheses[0][i] for i in chosen]
    if original_protocol:
        score = metrics.score_as_the_original_code(ev.metric, [refs[i] for i in chosen], [answers[i] for i in chosen],
                                               [[h[i] for i in chosen] for h in hypotheses], seed=top.seed,
                                               resamples=ev.bootstrap_resamples)
    elif ev.metric == "qa_accuracy":
        score = metrics.score_qa(answers, hyps, seed=top.seed, resamples=ev.bootstrap_resamples)
    else:
        score = metrics.score_asr(refs, hyps, ev.metric, seed=top.seed, resamples=ev.bootstrap_resamples)
    per_utterance = score.pop("per_utterance")
    audio_seconds = passes * sum(rows.durations[i] for i in chosen)
    if original_protocol:
        decoding = {"strategy": "sampling", **ORIGINAL_SAMPLING, "sampling_seeds": passes,
                    "subset": f"datasets' train_test_split(test_size={ORIGINAL_SUBSET['test_size']}, "
                              f"seed={ORIGINAL_SUBSET['seed']}): {len(chosen)} of {len(rows)} rows"}
    else:
        decoding = {"strategy": "greedy" if ev.num_beams == 1 else "beam", "num_beams": ev.num_beams,
                    "repetition_penalty": ev.repetition_penalty, "sampling": False}
    result = {
        "config": run.name, "config_sha256": run.sha256, "method": run.method, "protocol": ev.protocol, **score,
        "rtf": decode_seconds / audio_seconds, "decode_seconds": round(decode_seconds, 2),
        "audio_seconds": round(audio_seconds, 2),
        "decoding": {**decoding, "max_new_tokens": ev.max_new_tokens, "batch_size": ev.batch_size},
        **model_record,
    }

    building = output_dir.parent / f".{output_dir.name}.partial"
    shutil.rmtree(building, ignore_errors=True)
    with storage_errors(output_dir, "evaluation results", "earlier results there are kept", partial=building):
        building.mkdir(parents=True)
        with open(building / PREDICTIONS_FILE, "w") as handle:
            for n, i in enumerate(chosen):
                line = {"id": ids[i], "reference": refs[i], "hypothesis": hyps[n], **per_utterance[n]}
                if original_protocol:
                    line["hypotheses"] = [h[i] for h in hypotheses]  # one per sampling seed
                if rows.columns["prompt"][i]:
                    line["prompt"] = rows.columns["prompt"][i]
                if rows.columns["answers"][i]:
                    line["answers"] = rows.columns["answers"][i]
                handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        write_json(building / METRICS_FILE, result)
        if analysis is not None:
            write_json(building / STEERING_FILE, analysis)
            plot_steering(analysis, building / STEERING_PLOT, title=run.name)
        replace_dir(building, output_dir)
    tracking.log_evaluation(run, result)
    headline = f"{result['metric']} {result['value']:.4f} (95% CI {result['ci95'][0]:.4f}-{result['ci95'][1]:.4f})"
    log(f"{run.name}: {headline} on {len(chosen)} utterances ({ev.protocol} protocol), RTF {result['rtf']:.3f}; "
        f"written to {output_dir}")
    return result


def evaluate(run: RunConfig, checkpoint: Path | None = None, output_dir: Path | None = None, log=print,
             device: torch.device | None = None) -> dict:
    """Decode the run's whole test split on `device` (default: the job's GPU, else the CPU) and score it. A
    reference row decodes with the encoder's own model and loads no checkpoint."""
    reference = run.method == REFERENCE
    if reference and checkpoint:
        raise ConfigError(f"{run.path}: method {REFERENCE} loads no checkpoint (it decodes the encoder's own model, "
                          f"untrained); evaluate it without one")
    preflight(run, checkpoint)
    ev, top = run.evaluation, run.top
    output_dir = Path(output_dir) if output_dir else run.eval_dir
    torch.manual_seed(top.seed)
    decision = precision.for_run(run, log)
    device = device or precision.job_device()
    rows = load_rows(run, top.parquet_dirs, "parquet_dirs")  # the whole split: no filtering at test time
    decoder = reference_decoder(run, rows, decision, device) if reference else \
        steermoe_decoder(run, Path(checkpoint) if checkpoint else run.checkpoint_dir, decision, device)
    original_protocol = ev.protocol == "original"
    chosen = original_subset(len(rows)) if original_protocol else list(range(len(rows)))
    passes = ev.sampling_seeds if original_protocol else 1  # the original protocol decodes once per sampling seed
    windows = AudioWindows(rows, chosen, decoder.longest_seconds)
    decoded = decode_split(decoder, windows, passes, original_protocol, ev.batch_size,
                           loader_workers(top.dataloader_num_workers), log)
    if decoded is None:  # another process: process 0 scores and writes
        return {}
    hypotheses, stats, decode_seconds, world = decoded
    hypotheses = [windows.join(h) for h in hypotheses]
    windowed, dropped = windows.record(), dropped_at_preparation(rows.files)
    model_record = {
        **decoder.record, **({"windowed": windowed} if windowed else {}),
        **({"dropped_at_preparation": dropped} if dropped else {}),
        **precision.record(decision, device), "processes": world,
        "threads": torch.get_num_threads(),
        **precision.peak_memory(device),
    }
    analysis = {**stats.result(), **steering_parameters(decoder.steered)} if stats is not None else None
    return score_and_write(run, rows, chosen, hypotheses, decode_seconds, model_record, analysis, output_dir, log)
