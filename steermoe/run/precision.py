"""The precision policy: which floating-point format training and evaluation use on this device.

bf16 (autocast, and the frozen LLM's weights) only where the device computes it natively and fast: a CUDA GPU
with bf16, an x86 CPU with AMX, an ARM CPU with BF16. fp16 on GPUs without bf16. fp32 everywhere else: on a CPU that
only emulates bf16 (AVX2), a bf16 matmul runs tens of times slower than fp32. An x86 CPU with AVX-512-BF16 but no
AMX is ambiguous (one measured here ran bf16 matmuls at 0.55x its fp32 speed, another faster), and so is a CPU
whose flags cannot be read: a one-second micro-benchmark of both decides.

A config's explicit choice wins (`training.fp16: true`, `training.bf16: true|false`, `llm_decoder.dtype` other
than `auto`); asking for a precision the device only emulates logs one warning with the measured cost.

    caps = detect()                         # the device's capabilities (cached)
    decision = decide(caps, bf16="auto", fp16=False, dtype="auto")
    decision.precision, decision.weights    # e.g. 'fp32', 'float32'

STEERMOE_NATIVE_BF16=0 (or 1) overrides what the CPU check finds: `STEERMOE_NATIVE_BF16=0` gives any machine what
an AVX2-only CPU gets.
"""
from __future__ import annotations

import functools
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from steermoe.errors import ConfigError

AUTO = "auto"
OVERRIDE_ENV = "STEERMOE_NATIVE_BF16"
# CPU flags that say how fast bf16 can be (x86 in /proc/cpuinfo `flags`, ARM in `Features`)
X86_FAST_BF16 = ("amx_bf16",)
X86_SOME_BF16 = ("avx512_bf16",)  # native instructions, but not always faster than fp32: measured
ARM_FAST_BF16 = ("bf16",)
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "asimd", "bf16", "sve")
# bf16 is chosen by measurement when its matmul is at least this fast relative to fp32 (it also halves the frozen
# weights' memory, so a tie goes to bf16); emulated bf16 is ~45x slower, AVX-512-BF16 without AMX ~0.5-1.5x
NATIVE_RATIO = 1.0
WEIGHTS = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass(frozen=True)
class Capabilities:
    """What the device can do, as the policy sees it."""
    device: str  # 'cuda' or 'cpu'
    model: str  # GPU or CPU model name
    arch: str  # platform.machine()
    flags: tuple[str, ...] = ()  # the CPU's flags among REPORTED_FLAGS; empty if unknown
    flags_known: bool = True  # False where no /proc/cpuinfo could be read (macOS, some containers)
    cuda_bf16: bool = False
    native_bf16_override: bool | None = None  # STEERMOE_NATIVE_BF16

    def record(self) -> dict:
        """The device description results carry."""
        return {"device_model": self.model, "cpu_flags": " ".join(self.flags)}


@dataclass(frozen=True)
class Decision:
    precision: str  # 'bf16', 'fp16' or 'fp32': autocast in training
    weights: str  # the frozen LLM's weights dtype: 'bfloat16', 'float16' or 'float32'
    reason: str  # one line: why
    warnings: tuple[str, ...] = field(default=())

    def record(self) -> dict:
        return {"precision": self.precision, "weights_dtype": self.weights, "precision_reason": self.reason}


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> tuple[str, tuple[str, ...], bool]:
    """(model name, the reported flags it has, whether the flags could be read)."""
    fallback = platform.processor() or platform.machine()
    try:
        text = path.read_text()
    except OSError:
        return fallback, (), False
    fields: dict[str, str] = {}  # the first processor's entries are enough: every core reports the same
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("cpu model") or fallback
    return model, tuple(f for f in REPORTED_FLAGS if f in flags), bool(flags)


@functools.lru_cache(maxsize=1)
def detect() -> Capabilities:
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    native = {"0": False, "1": True}.get(override)
    if override and native is None:
        raise ConfigError(f"{OVERRIDE_ENV}={override!r}: use 0 (treat the CPU as having no native bf16) or 1")
    if torch.cuda.is_available():
        # without including_emulation=False, torch counts a V100's or T4's emulated bf16 as support
        return Capabilities("cuda", torch.cuda.get_device_name(), platform.machine(),
                            cuda_bf16=torch.cuda.is_bf16_supported(including_emulation=False),
                            native_bf16_override=native)
    model, flags, known = cpu_info()
    return Capabilities("cpu", model, platform.machine(), flags, known, native_bf16_override=native)


def cpu_bf16_from_flags(caps: Capabilities) -> bool | None:
    """Fast native bf16 by the CPU's flags; None where they cannot tell (AVX-512-BF16 without AMX, unread flags, an
    unknown architecture)."""
    if caps.native_bf16_override is not None:
        return caps.native_bf16_override
    if not caps.flags_known:
        return None
    arch = caps.arch.lower()
    if arch in ("x86_64", "amd64", "i686", "i386"):
        if any(f in caps.flags for f in X86_FAST_BF16):
            return True
        return None if any(f in caps.flags for f in X86_SOME_BF16) else False
    if arch in ("aarch64", "arm64"):
        return any(f in caps.flags for f in ARM_FAST_BF16)
    return None


def gflops(operation, flops: float, seconds: float = 0.5) -> float:
    """GFLOP/s of calling `operation` (flops each call) repeatedly for about `seconds`, after one warm-up call."""
    operation()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        operation()
        count += 1
    return flops * count / elapsed / 1e9


def matmul_gflops(dtype: torch.dtype, seconds: float = 0.5, size: int = 512) -> float:
    """GFLOP/s of a size x size matmul in dtype on the CPU (the process's torch threads), for about `seconds`.
    Its own random generator: a run's initial weights must not depend on whether the policy measured."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    return gflops(lambda: torch.mm(a, b), 2 * size ** 3, seconds)


@functools.lru_cache(maxsize=1)
def measured_bf16_cost() -> dict:
    """The one-second micro-benchmark: bf16 against fp32 matmul speed on this CPU (slowdown > 1: bf16 slower)."""
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    return {"fp32_gflops": round(fp32, 2), "bf16_gflops": round(bf16, 2), "bf16_slowdown": round(fp32 / bf16, 2)}


def native_bf16(caps: Capabilities, measure=measured_bf16_cost) -> bool:
    if caps.device == "cuda":
        return caps.cuda_bf16
    known = cpu_bf16_from_flags(caps)
    if known is not None:
        return known
    return measure()["bf16_slowdown"] <= 1 / NATIVE_RATIO


def decide(caps: Capabilities, bf16: bool | str | None = AUTO, fp16: bool = False, dtype: str = AUTO,
           deepspeed: bool = False, measure=measured_bf16_cost) -> Decision:
    """The precision of a run from the device's capabilities and the config's explicit choices.

    bf16: True / False / 'auto' (None counts as 'auto'); fp16: the original code's switch; dtype: the frozen LLM's
    weights ('auto' or a torch dtype name); deepspeed: DeepSpeed on a CPU runs fp32 unless bf16 is asked for explicitly
    (its CPU accelerator computes bf16, not fp16: the GPU's bf16 regime rehearsed).
    """
    warnings = []
    native = native_bf16(caps, measure)
    auto = "bf16" if native else "fp16" if caps.device == "cuda" else "fp32"
    how = "measured" if caps.device == "cpu" and cpu_bf16_from_flags(caps) is None else "by its flags"
    where = f"{caps.model} ({caps.device}" + (f"; flags: {' '.join(caps.flags) or 'none of note'})"
                                               if caps.device == "cpu" else ")")
    if fp16:
        wanted, why = "fp16", "training.fp16 is true"
    elif bf16 is True:
        wanted, why = "bf16", "training.bf16 is true"
    elif bf16 is False:
        wanted, why = "fp32", "training.bf16 is false"
    else:
        wanted, why = auto, f"auto: {'fast' if native else 'no fast'} bf16 ({how}) on {where}"
    if caps.device == "cuda":
        if wanted == "bf16" and not caps.cuda_bf16:
            warnings.append(f"{why}, but this GPU has no bf16: training in fp16")
            wanted = "fp16"
    else:
        if deepspeed and wanted == "bf16" and bf16 is not True:
            warnings.append(f"{why}, but DeepSpeed on a CPU trains in fp32 unless training.bf16 is true (which "
                            f"rehearses a GPU's bf16 regime): training in fp32")
            wanted = "fp32"
        elif deepspeed and wanted == "fp16":
            warnings.append(f"{why}, but DeepSpeed's CPU accelerator has no fp16: training in fp32 (training.bf16: "
                            f"true rehearses a GPU's bf16 regime)")
            wanted = "fp32"
        elif wanted == "fp16":
            wanted = "bf16" if native else "fp32"
            warnings.append(f"{why}, but fp16 needs a GPU: training in {wanted} on this CPU")
        elif wanted == "bf16" and not native:
            warnings.append(f"{why}, but bf16 is slow on {where}: {_cost(measure)}; set training.bf16: auto "
                            f"(or false) for fp32")
    if dtype in (None, AUTO):
        weights = WEIGHTS[wanted]
    else:
        weights = dtype
        if weights == "bfloat16" and not native:
            warnings.append(f"llm_decoder.dtype is bfloat16, but bf16 is slow on {where}: {_cost(measure)}; set "
                            f"llm_decoder.dtype: auto")
        elif weights == "float16" and caps.device == "cpu":
            warnings.append("llm_decoder.dtype is float16 on a CPU, whose fp16 matmuls are slow; set "
                            "llm_decoder.dtype: auto")
    return Decision(wanted, weights, why, tuple(dict.fromkeys(warnings)))


def _cost(measure) -> str:
    cost = measure()
    speeds = f"({cost['bf16_gflops']:.1f} against {cost['fp32_gflops']:.1f} GFLOP/s)"
    if cost["bf16_slowdown"] >= 1:
        return f"a bf16 matmul ran {cost['bf16_slowdown']:.3g}x slower than fp32 here {speeds}"
    return (f"a bf16 matmul ran {1 / cost['bf16_slowdown']:.3g}x faster than fp32 here {speeds}, but "
            f"{OVERRIDE_ENV}=0 treats this CPU as having no native bf16")


def for_run(run, log=print) -> Decision:
    """The decision for a run config, its warnings logged once."""
    t = run.training
    decision = decide(detect(), t.bf16, t.fp16, run.decoder.dtype, deepspeed=t.use_deepspeed)
    for warning in decision.warnings:
        log(f"warning: {warning}")
    return decision


def job_device() -> torch.device:
    """Where this process computes: its own GPU (LOCAL_RANK of the visible ones) if it has any, made the current
    device (else every process of a launch opens a context on GPU 0 too), or else the CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def autocast(decision: Decision):
    """The autocast context of a decision on this device (a no-op context for fp32)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(decision.precision)
    return torch.autocast(detect().device, dtype=dtype, enabled=dtype is not None)


def record(decision: Decision, device: torch.device | str) -> dict:
    """Precision and the device a job ran on ('cpu', 'cuda:0'), as train_summary.json, metrics.json and the table
    carry them."""
    device = torch.device(device)
    shown = "cpu" if device.type == "cpu" else str(device)  # DDP on CPUs calls it cpu:0; the index means nothing there
    return {**decision.record(), "device": shown, **detect().record()}


def peak_memory(device: torch.device) -> dict:
    """This process's peak host memory (its resident set, what a SLURM mem_mb limit counts) and, on a GPU, the
    peak of torch's allocations, in MB: the measurements the plan's estimates are checked against."""
    host = {"peak_host_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    if device.type != "cuda":
        return host
    return {**host, "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)}


def summary() -> dict:
    """What the policy chooses on this machine by default, with its inputs (for benchmarks and `steermoe env`)."""
    caps = detect()
    return {**asdict(caps), **decide(caps).record()}
