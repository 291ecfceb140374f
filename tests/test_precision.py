"""The precision policy: capabilities injected (never detected), so each case runs on any machine."""
from __future__ import annotations

import pytest
import torch

from steermoe.errors import ConfigError

from steermoe.run import precision
from steermoe.run.precision import Capabilities, decide

AVX2 = Capabilities("cpu", "AMD EPYC 7B13", "x86_64", ("avx2",))
AVX512_BF16 = Capabilities("cpu", "Intel Xeon (Cooper Lake)", "x86_64", ("avx2", "avx512f", "avx512_bf16"))
AMX = Capabilities("cpu", "Intel Xeon", "x86_64", ("avx2", "avx512f", "amx_tile", "amx_bf16"))
ARM_BF16 = Capabilities("cpu", "Neoverse-V1", "aarch64", ("asimd", "bf16"))
ARM_PLAIN = Capabilities("cpu", "Cortex-A72", "aarch64", ("asimd",))
UNKNOWN_FLAGS = Capabilities("cpu", "arm", "arm64", (), flags_known=False)  # e.g. macOS: no /proc/cpuinfo
GPU_BF16 = Capabilities("cuda", "NVIDIA H100", "x86_64", cuda_bf16=True)
GPU_OLD = Capabilities("cuda", "Tesla V100", "x86_64", cuda_bf16=False)

EMULATED = {"fp32_gflops": 34.9, "bf16_gflops": 0.8, "bf16_slowdown": 43.6}
NATIVE = {"fp32_gflops": 60.0, "bf16_gflops": 240.0, "bf16_slowdown": 0.25}


def never():
    raise AssertionError("the flags decide: no micro-benchmark")


@pytest.mark.parametrize("caps, chosen", [
    (AVX2, ("fp32", "float32")), (AMX, ("bf16", "bfloat16")),
    (ARM_BF16, ("bf16", "bfloat16")), (ARM_PLAIN, ("fp32", "float32")),
    (GPU_BF16, ("bf16", "bfloat16")), (GPU_OLD, ("fp16", "float16")),
])
def test_auto_chooses_what_the_device_computes_natively(caps, chosen):
    decision = decide(caps, measure=never)
    assert (decision.precision, decision.weights) == chosen
    assert decision.warnings == ()


SLOWER = {"fp32_gflops": 140.0, "bf16_gflops": 77.0, "bf16_slowdown": 1.82}  # measured: AVX-512-BF16, no AMX


@pytest.mark.parametrize("caps", [UNKNOWN_FLAGS, AVX512_BF16])
@pytest.mark.parametrize("cost, chosen", [(EMULATED, "fp32"), (SLOWER, "fp32"), (NATIVE, "bf16")])
def test_ambiguous_flags_are_settled_by_the_micro_benchmark(caps, cost, chosen):
    calls = []
    decision = decide(caps, measure=lambda: calls.append(1) or cost)
    assert decision.precision == chosen and calls and "(measured)" in decision.reason


def test_explicit_bf16_wins_on_an_emulating_cpu_with_one_warning_stating_the_cost():
    decision = decide(AVX2, bf16=True, measure=lambda: EMULATED)
    assert (decision.precision, decision.weights) == ("bf16", "bfloat16")
    warning, = decision.warnings
    assert "bf16 is slow" in warning and "43.6x slower" in warning and "0.8 against 34.9 GFLOP/s" in warning


def test_a_cpu_forced_to_count_as_emulating_is_not_said_to_be_slower_when_it_measured_faster():
    forced = Capabilities("cpu", "AMD EPYC", "x86_64", ("avx512_bf16",), native_bf16_override=False)
    fast = {"fp32_gflops": 40.5, "bf16_gflops": 98.7, "bf16_slowdown": 0.41}
    warning, = decide(forced, bf16=True, measure=lambda: fast).warnings
    assert "ran 2.44x faster than fp32 here (98.7 against 40.5 GFLOP/s), but STEERMOE_NATIVE_BF16=0 treats" in warning


def test_explicit_choices_win_over_auto():
    assert decide(AMX, bf16=False, measure=never).precision == "fp32"  # bf16: false -> fp32 even where native
    assert decide(AMX, bf16=False, measure=never).weights == "float32"
    assert decide(GPU_BF16, fp16=True, measure=never).precision == "fp16"
    explicit_weights = decide(AVX2, dtype="bfloat16", measure=lambda: EMULATED)
    assert (explicit_weights.precision, explicit_weights.weights) == ("fp32", "bfloat16")
    assert "llm_decoder.dtype is bfloat16" in explicit_weights.warnings[0]
    assert decide(AMX, dtype="float32", measure=never).weights == "float32"


def test_what_a_device_cannot_do_falls_back_with_a_warning():
    old_gpu = decide(GPU_OLD, bf16=True, measure=never)
    assert old_gpu.precision == "fp16" and "no bf16" in old_gpu.warnings[0]
    cpu_fp16 = decide(AVX2, fp16=True, measure=lambda: EMULATED)
    assert cpu_fp16.precision == "fp32" and "fp16 needs a GPU" in cpu_fp16.warnings[0]
    assert decide(AMX, fp16=True, measure=never).precision == "bf16"
    ds = decide(AMX, deepspeed=True, measure=never)
    assert ds.precision == "fp32" and "DeepSpeed on a CPU trains in fp32 unless training.bf16 is true" in \
        ds.warnings[0]
    ds_fp16 = decide(AMX, fp16=True, deepspeed=True, measure=never)
    assert ds_fp16.precision == "fp32" and "DeepSpeed's CPU accelerator has no fp16" in ds_fp16.warnings[0]


def test_an_explicit_bf16_runs_deepspeed_in_bf16_on_a_cpu_to_rehearse_the_gpu_regime():
    assert decide(AMX, bf16=True, deepspeed=True, measure=never).precision == "bf16"
    emulated = decide(AVX2, bf16=True, deepspeed=True, measure=lambda: EMULATED)
    assert (emulated.precision, emulated.weights) == ("bf16", "bfloat16") and "bf16 is slow" in emulated.warnings[0]


def test_a_gpu_that_only_emulates_bf16_trains_in_fp16(monkeypatch):
    """torch.cuda.is_bf16_supported() counts a V100's emulated bf16 unless including_emulation=False."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla V100-SXM2-32GB")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    precision.detect.cache_clear()
    try:
        caps = precision.detect()
        assert caps.cuda_bf16 is False
        assert decide(caps, measure=never).precision == "fp16"
        assert decide(caps, bf16=True, measure=never).precision == "fp16"
    finally:
        precision.detect.cache_clear()


def test_the_override_variable_replaces_the_flags():
    forced = Capabilities("cpu", "Intel Xeon", "x86_64", ("avx512_bf16", "amx_bf16"), native_bf16_override=False)
    assert decide(forced, measure=never).precision == "fp32"
    assert decide(Capabilities("cpu", "x", "x86_64", ("avx2",), native_bf16_override=True),
                  measure=never).precision == "bf16"


def test_detect_reads_the_override_variable(monkeypatch):
    precision.detect.cache_clear()
    monkeypatch.setenv(precision.OVERRIDE_ENV, "0")
    try:
        assert precision.detect().native_bf16_override is False
        if not torch.cuda.is_available():
            assert decide(precision.detect(), measure=never).precision == "fp32"
        monkeypatch.setenv(precision.OVERRIDE_ENV, "maybe")
        precision.detect.cache_clear()
        with pytest.raises(ValueError, match="STEERMOE_NATIVE_BF16='maybe'"):
            precision.detect()
    finally:
        precision.detect.cache_clear()


def test_cpu_info_reads_x86_and_arm_flags(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n\n"
                   "processor\t: 1\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx avx2 fma\n")
    assert precision.cpu_info(x86) == ("AMD EPYC 7B13", ("avx2",), True)
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes bf16 sve\nCPU part\t: 0xd40\n")
    assert precision.cpu_info(arm)[1:] == (("asimd", "bf16", "sve"), True)
    assert precision.cpu_info(tmp_path / "missing")[2] is False


def test_the_micro_benchmark_measures_both_formats_and_leaves_the_global_random_state_alone():
    """A run's initial weights are drawn after the policy decides: they must not depend on whether it measured."""
    precision.measured_bf16_cost.cache_clear()
    before = torch.get_rng_state()
    cost = precision.measured_bf16_cost()
    assert torch.equal(torch.get_rng_state(), before)
    assert cost["fp32_gflops"] > 0 and cost["bf16_gflops"] > 0
    # All three are rounded to two decimals: a slowdown of 0.37 may come from 0.3744.
    assert cost["bf16_slowdown"] == pytest.approx(cost["fp32_gflops"] / cost["bf16_gflops"], rel=0.01, abs=0.01)


MINIMAL = """\
whisper_encoder: {model_path: /m/whisper}
llm_decoder: {model_name: /m/qwen%s}
training: {output_dir: /r/out%s}
parquet_dirs: [/d/train]
"""


@pytest.mark.parametrize("decoder, training, chosen", [
    ("", "", ("fp32", "float32")),  # no precision keys: auto
    ("", ", bf16: auto", ("fp32", "float32")),
    ("", ", bf16: true", ("bf16", "bfloat16")),  # explicit wins, with a warning
    (", dtype: bfloat16", "", ("fp32", "bfloat16")),
    ("", ", fp16: true", ("fp32", "float32")),  # fp16 on a CPU without fast bf16
])
def test_a_configs_explicit_precision_wins_over_the_policy(tmp_path, monkeypatch, decoder, training, chosen):
    from steermoe.declare.runconfig import parse_run_config

    monkeypatch.setattr(precision, "detect", lambda: AVX2)
    monkeypatch.setattr(precision, "measured_bf16_cost", lambda: EMULATED)
    run = parse_run_config((MINIMAL % (decoder, training)).encode(), tmp_path / "layer_wise_w_q_d_train.yaml")
    warnings = []
    decision = precision.for_run(run, warnings.append)
    assert (decision.precision, decision.weights) == chosen
    assert bool(warnings) == (decoder + training not in ("", ", bf16: auto"))


def test_bf16_accepts_true_false_or_auto_and_nothing_else(tmp_path):
    from steermoe.declare.runconfig import parse_run_config

    with pytest.raises(ConfigError, match=r"training.bf16: 'yes' is not one of True, False, auto"):
        parse_run_config((MINIMAL % ("", ", bf16: 'yes'")).encode(), tmp_path / "layer_wise_w_q_d_train.yaml")
    with pytest.raises(ConfigError, match=r"llm_decoder.dtype: 'half' is not one of auto, float32"):
        parse_run_config((MINIMAL % (", dtype: half", "")).encode(), tmp_path / "layer_wise_w_q_d_train.yaml")


def test_each_process_computes_on_its_own_visible_gpu_or_else_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # CUDA_VISIBLE_DEVICES shows this job two GPUs
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)  # each process makes its GPU the current one
    for local_rank, device in (("0", "cuda:0"), ("1", "cuda:1"), ("3", "cuda:1")):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert str(precision.job_device()) == device and str(current[-1]) == device
    monkeypatch.delenv("LOCAL_RANK")
    assert str(precision.job_device()) == "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert str(precision.job_device()) == "cpu"
    assert precision.record(precision.Decision("fp32", "float32", "test"), "cpu:0")["device"] == "cpu"
