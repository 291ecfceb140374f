"""GPU memory per GPU and host memory per job of a training job, estimated before anything runs (`steermoe plan`),
beside the GPU's size and the job's mem_mb.

Torch-free arithmetic on the plan's shapes and sizes (steermoe/report/plan.py: the means of a batch's utterances; the
longest batch of a run needs more). Bytes per GPU:

    weights      frozen and trainable parameters in their dtype: under DeepSpeed every module's in the engine's
                 (2 bytes in bf16/fp16); else the encoder in fp32 (4) and the LLM in the precision policy's dtype;
                 ZeRO-3 slices them over the job's GPUs (with parameter offload they wait in host memory)
    optimiser    fp32 master, gradient and AdamW's two moments of the trainable parameters (16 bytes each), sliced
                 over the GPUs under ZeRO; none on the GPU with optimiser offload
    activations  what the backward pass keeps, per layer and position (Korthikanti et al., 2022, without the
                 attention scores, which SDPA does not keep): 34 H bytes in 16 bits (68 H in fp32) per decoder
                 layer and token, since gradients flow back through the whole frozen LLM to the audio prompt; the
                 same per encoder layer and frame where they flow into the encoder (layer_wise, lora); with gradient
                 checkpointing each layer keeps only its input (2 H bytes) and one layer is recomputed at a time
    logits       the LM head's output on the scored positions and its gradient, in fp32
    overhead     1.5 GiB: the CUDA context and the allocator's reserve

Host bytes per process (one per GPU), times the processes for the job:

    runtime      Python, torch and transformers (0.5 GiB once imported), transient copies while weights load,
                 activations and the allocator's cache: 3 GiB with CUDA's host side, 1.8 GiB on a CPU (the embedded
                 default's layer_wise training, 1120 steps with dev evaluations, peaked at 2.1 GiB on a 2-core
                 Xeon, 0.3 GiB of it the weights as counted below)
    weights      the encoder in fp32 and the LLM in its dtype: each process loads them on the host before moving
                 them to its GPU (under ZeRO-3 with parameter offload they stay there)
    index        the training rows' ids, texts and durations (INDEX_BYTES_PER_ROW each; the audio stays in the
                 parquet files, read a row group at a time)
    workers      each loader worker: the Python heap pages it touches after the fork and its cached row groups
    optimiser    with optimiser offload: fp32 master, gradient and AdamW's moments of the trainable parameters,
                 sliced over the processes
"""
from __future__ import annotations

import math

from steermoe.declare.settings import TRAINED_METHODS

GIB = 2 ** 30
OVERHEAD_BYTES = 1.5 * GIB
ACTIVATION_BYTES_PER_WIDTH = 34  # per layer, position and hidden unit, 16-bit activations
H100_MEMORY_GIB = 80.0
RUNTIME_HOST_BYTES = {"gpu": 3 * GIB, "cpu": 1.8 * GIB}
INDEX_BYTES_PER_ROW = 2048  # measured well below this (bench/data.py)
WORKER_HOST_BYTES = 0.5 * GIB
HOST_MARGIN = 1.25  # mem_mb by default: the estimate with a quarter more for what it leaves out
FALLBACK_MEM_MB = 8000  # mem_mb where the models' parameter counts are unknown (a folder without safetensors)


def training_memory(*, method: str, encoder_parameters: int, decoder_parameters: int, trainable: int,
                    encoder_width: int, encoder_layers: int, frames: int, decoder_hidden: int, decoder_layers: int,
                    decoder_tokens: float, head_tokens: float, vocab_size: int, batch: int, devices: int,
                    half_precision: bool, weights_bytes: int, zero_stage: int, offload_optimizer: bool,
                    offload_parameters: bool, gradient_checkpointing: bool) -> dict[str, float]:
    """Bytes per GPU by part, and their total. weights_bytes: the frozen LLM's bytes per parameter without
    DeepSpeed; zero_stage: 0 without DeepSpeed."""
    deepspeed = zero_stage > 0
    if deepspeed:
        weights = 2 * (encoder_parameters + decoder_parameters) if half_precision else \
            4 * (encoder_parameters + decoder_parameters)
        if zero_stage >= 3:
            weights = 0 if offload_parameters else weights / devices
    else:
        weights = 4 * encoder_parameters + weights_bytes * decoder_parameters
    optimiser = 0 if offload_optimizer else 16 * trainable / (devices if deepspeed else 1)
    per_unit = ACTIVATION_BYTES_PER_WIDTH * (1 if half_precision else 2)

    def kept(layers: int, positions: float, width: int) -> float:
        if gradient_checkpointing:  # layer inputs, and one layer recomputed with its activations
            return (layers * 2 + per_unit) * positions * width * batch
        return layers * per_unit * positions * width * batch

    backward_layers = TRAINED_METHODS[method].encoder_backward_layers(encoder_layers)
    activations = kept(decoder_layers, decoder_tokens, decoder_hidden) + \
        (kept(backward_layers, frames, encoder_width) if backward_layers else 0)
    logits = 2 * 4 * batch * head_tokens * vocab_size
    parts = {"weights": weights, "optimiser": optimiser, "activations": activations, "logits": logits,
             "overhead": OVERHEAD_BYTES}
    return {**parts, "total": sum(parts.values())}


def host_memory(*, encoder_parameters: int, decoder_parameters: int, weights_bytes: int, trainable: int,
                rows: int, workers: int, processes: int, gpu: bool, offload_optimizer: bool) -> dict[str, float]:
    """Host bytes per process by part, the process's total and the job's (`processes` of them)."""
    parts = {"runtime": RUNTIME_HOST_BYTES["gpu" if gpu else "cpu"],
             "weights": 4 * encoder_parameters + weights_bytes * decoder_parameters,
             "index": INDEX_BYTES_PER_ROW * rows, "workers": WORKER_HOST_BYTES * workers,
             "optimiser": 16 * trainable / processes if offload_optimizer else 0}
    per_process = sum(parts.values())
    return {**parts, "per_process": per_process, "job": per_process * processes}


def mem_mb_request(job_bytes: float) -> int:
    """The mem_mb a job asks for by default: its host estimate and HOST_MARGIN, rounded up to 1000 MB."""
    return math.ceil(job_bytes * HOST_MARGIN / 2 ** 20 / 1000) * 1000


def too_small(mem_mb: int, host: dict[str, float], processes: int) -> str | None:
    """What is wrong with a job's mem_mb that cannot hold its host estimate `host` (host_memory's), else None."""
    if mem_mb * 2 ** 20 >= host["job"]:
        return None
    shown = ", ".join(f"{k} {gib(v):g}" for k, v in host.items() if k not in ("per_process", "job"))
    return (f"mem_mb {mem_mb} cannot hold the job: about {gib(host['job']):g} GiB of host memory ({processes} "
            f"process(es) of {gib(host['per_process']):g} GiB: {shown}); set mem_mb to at least "
            f"{mem_mb_request(host['job'])}")


def gib(value: float) -> float:
    return math.ceil(value / GIB * 10) / 10
