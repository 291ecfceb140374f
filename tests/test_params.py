"""Parameter accounting: the formulas, meta-device builds of full-size shapes, the CLI."""
import json
import subprocess
import sys

import pytest

from steermoe.declare.model_config import SteerMoEConfig
from steermoe.model.encoders import ModelFolderError
from steermoe.model.params import count_parameters, formula_counts, meta_model


def write_shapes(tmp_path, layers, width, llm_width):
    enc = {"model_type": "whisper", "num_mel_bins": 80, "d_model": width, "encoder_layers": layers,
           "encoder_attention_heads": 4, "encoder_ffn_dim": 2 * width, "decoder_layers": 1,
           "decoder_attention_heads": 4, "decoder_ffn_dim": 2 * width, "vocab_size": 100}
    dec = {"model_type": "qwen2", "hidden_size": llm_width, "intermediate_size": 2 * llm_width,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    (tmp_path / "enc.json").write_text(json.dumps(enc))
    (tmp_path / "dec.json").write_text(json.dumps(dec))
    return tmp_path / "enc.json", tmp_path / "dec.json"


@pytest.mark.parametrize("layers,experts,width,llm_width", [(2, 4, 32, 48), (4, 8, 64, 96), (6, 3, 128, 64),
                                                            (12, 16, 256, 512)])
def test_counts_match_spec_formulas(tmp_path, layers, experts, width, llm_width):
    enc, dec = write_shapes(tmp_path, layers, width, llm_width)
    counts = count_parameters(meta_model(SteerMoEConfig(num_experts=experts), enc, dec))
    expected = formula_counts(layers, experts, width, llm_width)
    assert {k: counts[k] for k in expected} == expected
    assert counts["lora"] == 0 and counts["trainable"] == sum(expected.values())
    # ablations: post_encoder is one steering site; linear is the projection alone; fixed scales are not trained
    post = count_parameters(meta_model(SteerMoEConfig(method="post_encoder", num_experts=experts), enc, dec))
    assert {k: post[k] for k in expected} == formula_counts(1, experts, width, llm_width)
    linear = count_parameters(meta_model(SteerMoEConfig(method="linear"), enc, dec))
    assert linear["trainable"] == expected["projection"]
    fixed = count_parameters(meta_model(SteerMoEConfig(num_experts=experts, use_layer_scales=False), enc, dec))
    assert fixed["layer_scales"] == 0 and fixed["trainable"] == counts["trainable"] - layers


def test_lora_count(tmp_path):
    enc, dec = write_shapes(tmp_path, 2, 32, 48)
    counts = count_parameters(meta_model(SteerMoEConfig(method="lora", lora_r=4), enc, dec))
    # per layer: q, k, v, out (32 -> 32) and fc1 (32 -> 64), fc2 (64 -> 32); LoRA adds r * (in + out) each
    per_layer = 4 * 4 * (32 + 32) + 2 * 4 * (32 + 64)
    assert counts["lora"] == 2 * per_layer


def test_llm_lora_and_mlp_projector_counts(tmp_path):
    enc, dec = write_shapes(tmp_path, 2, 32, 48)
    counts = count_parameters(meta_model(SteerMoEConfig(method="llm_lora", lora_r=4), enc, dec))
    # per LLM layer: q (48 -> 48) and v (48 -> 2 KV heads x 12 = 24); LoRA adds r * (in + out) each; 2 layers
    assert counts["llm_lora"] == 2 * (4 * (48 + 48) + 4 * (48 + 24))
    assert counts["lora"] == 0 and counts["trainable"] == counts["llm_lora"] + 32 * 48 + 48
    plain = count_parameters(meta_model(SteerMoEConfig(method="linear"), enc, dec))
    assert counts["frozen_decoder"] == plain["frozen_decoder"]  # the adapters are trainable, not frozen weights
    mlp = count_parameters(meta_model(SteerMoEConfig(method="linear", projector="mlp", projector_hidden=100), enc, dec))
    assert mlp["projection"] == (32 * 100 + 100) + (100 * 48 + 48)


def test_full_size_shapes_on_meta_device():
    model = meta_model(SteerMoEConfig(), "whisper-large-v3", "qwen2.5-7b-instruct")
    assert all(p.device.type == "meta" for p in model.parameters())
    counts = count_parameters(model)
    assert counts == {**counts, **formula_counts(32, 8, 1280, 3584)}
    assert 7.5e9 < counts["frozen_decoder"] < 7.7e9 and 6.3e8 < counts["frozen_encoder"] < 6.4e8


def test_params_cli_7b_with_little_memory():
    """`steermoe params` builds Whisper-large-v3 + Qwen2.5-7B shapes without allocating their ~30 GB of weights."""
    # The child reports the peak of its own address space (VmHWM). Not ru_maxrss: Linux carries the peak of the
    # address space that exec replaced into it, and subprocess spawns by vfork, so it would be this pytest process's.
    child = ("import sys; from steermoe.cli import main; code = main(sys.argv[1:]); "
             "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM:')).split()[1], file=sys.stderr); "
             "sys.exit(code)")
    out = subprocess.run([sys.executable, "-c", child, "params", "--encoder", "whisper-large-v3",
                          "--decoder", "qwen2.5-7b-instruct", "--json"], capture_output=True, text=True, check=True)
    counts = json.loads(out.stdout)
    assert counts["trainable"] == sum(formula_counts(32, 8, 1280, 3584).values()) == 5_246_752
    peak_mib = int(out.stderr.split()[-1]) / 1024
    assert peak_mib < 2048, f"peak RSS {peak_mib:.0f} MiB: weights were allocated"


def test_params_cli_errors_are_one_clear_line():
    out = subprocess.run([sys.executable, "-m", "steermoe.cli", "params", "--encoder", "no-such-encoder",
                          "--decoder", "qwen2.5-7b-instruct"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "no-such-encoder" in out.stderr and "whisper-large-v3" in out.stderr and "Traceback" not in out.stderr


def test_unknown_shape_and_wrong_kind(tmp_path):
    with pytest.raises(ModelFolderError, match="shipped shape"):
        meta_model(SteerMoEConfig(), "whisper-huge", "qwen2.5-7b-instruct")
    with pytest.raises(ModelFolderError, match="not an audio encoder"):
        meta_model(SteerMoEConfig(), "qwen2.5-3b-instruct", "qwen2.5-7b-instruct")


def test_conformer_shape_counts():
    model = meta_model(SteerMoEConfig(), "fireredasr-aed-l", "qwen2.5-7b-instruct")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    counts = count_parameters(model)
    assert counts == {**counts, **formula_counts(16, 8, 1280, 3584)}
