"""The benchmarks keep running: the cheap ones in --quick mode, the original approach's loss on tiny models, and
the heavy ones (real training steps on the embedded models) as slow tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steermoe.declare.matrix import load_matrix

REPO = Path(__file__).resolve().parent.parent


def bench(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def test_runner_names_the_benchmarks_on_a_wrong_name():
    proc = bench("nope")
    assert proc.returncode == 2
    assert "unknown benchmark(s) nope" in proc.stderr and "throughput" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: the GPU benchmark runs for real")
def test_gpu_benchmark_exits_cleanly_without_a_gpu():
    proc = bench("gpu", "--quick")
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU is present" in proc.stdout


def test_orchestration_dry_run_of_a_generated_matrix(tmp_path):
    from bench import orchestration

    (tmp_path / "axes.yaml").write_text(orchestration.matrix(1000))
    (tmp_path / "rows.tsv").write_text(orchestration.explicit_matrix(1000))  # for a commit without YAML matrices
    ids = [e.id for e in load_matrix(tmp_path / "axes.yaml", REPO / "experiments/catalog.yaml")]
    assert len(set(ids)) == 1000 and ids == [e.id for e in load_matrix(tmp_path / "rows.tsv",
                                                                       REPO / "experiments/catalog.yaml")]
    out = tmp_path / "orchestration.json"
    result = orchestration.main(["--quick", "--rows", "30", "--compare-ref", "HEAD", "--out", str(out)])
    assert json.loads(out.read_text())["experiments"] == 40  # rounded up to whole seeds
    assert result["jobs"] >= 2 * 40  # train and evaluate per experiment, plus data, models and the table
    assert result["compare"]["ref"] == "HEAD" and len(result["compare"]["dry_run_seconds"]) == 1
    assert result["median_cli_help_seconds"] > 0
    assert result["verdict"].startswith("not judged")  # the target is for 1,000 experiments


def test_storage_bytes_and_final_checkpoint(tmp_path, embedded_models):
    from bench import storage

    result = storage.main(["--quick", "--out", str(tmp_path / "storage.json")])
    assert result["ratio_mel80"] > 10  # FLAC vs 30-s padded fp32 log-mel
    assert set(result["final_files"]) == {"model.safetensors", "steermoe.json", "train_summary.json"}
    assert 1.0 < result["checkpoint_ratio"] <= 1.05  # trainable parameters only, fp32, plus small metadata


def test_original_approach_pads_to_30_s_and_448_tokens_without_masking():
    from bench.original import MAX_TEXT_TOKENS, original_loss
    from tests.tiny import features, tiny_model

    model = tiny_model("layer_wise", encoder_window="30s", pooling_kernel_size=4).train()
    feats, lengths = features("whisper", [150, 300])
    seen = {}
    model.decoder.register_forward_pre_hook(lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True)
    loss = original_loss(model, feats, lengths, ["one two", "three"], ["say: ", "say: "])
    assert torch.isfinite(loss)
    assert seen["inputs_embeds"].shape[1] == 1500 // 4 + MAX_TEXT_TOKENS
    assert bool(seen["attention_mask"].all())
    loss.backward()
    assert model.steering.steering_vectors.grad is not None


@pytest.mark.slow
def test_gpu_measurement_code_on_cpu_with_small_shapes():
    from bench import gpu

    result = gpu.measure("whisper-tiny.en", "smollm2-135m-instruct", "cpu", batch_size=1, seconds=2.0, steps=1,
                         warmup=0)
    assert result["samples_per_second"] > 0
    parts = result["flops_per_utterance"]
    assert parts["decoder_backward"] < 1.5 * parts["decoder_forward"]  # activation gradients only: ~1x, not 2x


@pytest.mark.slow
def test_training_benchmarks_quick(embedded_models, tmp_path):
    for name in ("throughput", "overhead", "evaluation", "memory"):
        out = tmp_path / f"{name}.json"
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}", "--quick", "--out", str(out)], cwd=REPO,
                              capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-3000:]}"
        assert json.loads(out.read_text())["benchmark"] == name


@pytest.mark.slow
def test_data_benchmark_holds_memory_flat_and_the_vectorised_fbank_outruns_the_releases(embedded_models, tmp_path):
    from bench import data

    result = data.main(["--quick", "--out", str(tmp_path / "data.json")])
    sizes = [m["rows"] for m in result["memory"]]
    assert sizes == sorted(sizes) and sizes[-1] > 10 * sizes[0]  # 0.1 to 2 h of audio: 20 times the rows
    assert result["rss_ratio_largest_to_smallest"] < 1.2
    fbank = next(r for r in result["loader"] if r["features"] == "fireredasr")["per_core"]
    assert fbank["ours"] > fbank["kaldi-native-fbank"]
    assert [p["workers"] for p in result["preparation"]] == [1, 2] and result["projected_minutes_960h_16_cores"] > 0


@pytest.mark.slow
def test_precision_benchmark_reports_both_formats_and_the_policys_choice(embedded_models, tmp_path):
    from bench import precision as bench_precision

    result = bench_precision.main(["--quick", "--out", str(tmp_path / "precision.json")])
    assert set(result["median_step_seconds"]) == {"fp32", "bf16"}
    assert result["policy"]["precision"] in ("fp32", "bf16")
    assert all(v > 0 for formats in result["matmul_gflops"].values() for v in formats.values())
    assert result["verdict"] == "met" or result["verdict"].startswith("missed (policy chose")


def fake_nvidia_smi(folder: Path, names: str) -> dict:
    """An environment whose `nvidia-smi` lists the GPUs in `names` (one a line) and driver 550.54."""
    folder.mkdir()
    (folder / "nvidia-smi").write_text(
        f"#!/bin/sh\ncase \"$*\" in *driver_version*) echo 550.54;; *) printf '{names}';; esac\n")
    (folder / "nvidia-smi").chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: gpu-check runs for real")
def test_gpu_check_script_says_there_is_no_gpu_and_exits_cleanly(tmp_path):
    env = fake_nvidia_smi(tmp_path / "bin", "")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "gpu-check: no CUDA GPU on this machine (nvidia-smi lists none) and none visible to torch" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: gpu-check runs for real")
def test_gpu_check_script_fails_when_a_listed_gpu_is_unusable_by_torch(tmp_path):
    """A CPU build of torch (or a driver it cannot use) on a GPU machine is a failure, not 'nothing to check'."""
    env = fake_nvidia_smi(tmp_path / "bin", "NVIDIA H100 80GB HBM3\\n")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu-check.sh")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gpu-check: nvidia-smi lists 1 GPU(s) but torch" in proc.stderr and "driver (550.54)" in proc.stderr


@pytest.mark.slow
def test_device_benchmark_trains_and_decodes_on_this_processs_device(embedded_models, tmp_path):
    from bench import devices

    result = devices.main(["--quick", "--batch-sizes", "1", "4", "--out", str(tmp_path / "devices.json")])
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert result["device"] == expected and result["parameter_devices"] == [expected]
    assert result["median_step_seconds"] > 0 and set(result["decode_utterances_per_second"]) == {1, 4}
