"""Strict loading of experiment YAML: the original code's format loads; mistakes name the file, key and fix."""
from pathlib import Path

import pytest

from steermoe.declare.runconfig import load_run_config, parse_name
from steermoe.errors import ConfigError

SEED_EXAMPLE = Path(__file__).parent / "data" / "layer_wise_whisper_qwen7b_libri_train.yaml"
MINIMAL = """\
whisper_encoder: {model_path: /m/whisper}
llm_decoder: {model_name: /m/qwen}
training: {output_dir: /r/out}
parquet_dirs: [/d/train]
"""


def write(tmp_path, text, name="layer_wise_whisper_qwen7b_libri_train.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_original_codes_example_loads_with_every_value():
    run = load_run_config(SEED_EXAMPLE)
    assert (run.method, run.mode, run.encoder_kind) == ("layer_wise", "train", "whisper")
    assert (run.encoder.model_path, run.encoder.feature_dim, run.encoder.num_layers) == \
        ("/mnt/models/whisper-large-v3/", 1280, 32)
    assert (run.decoder.max_length, run.decoder.use_cache) == (512, False)
    t = run.training
    # YAML 1.2 numbers: PyYAML alone reads 1e-4 as the string "1e-4"
    assert (t.learning_rate, t.steering_learning_rate, t.router_learning_rate) == (1e-4, 1e-2, 1e-3)
    assert (t.batch_size, t.epochs, t.weight_decay, t.warmup_steps, t.gradient_clipping) == (4, 10.0, 0.01, 1000, 1.0)
    assert t.fp16 and t.use_deepspeed and t.deepspeed_config.endswith("stage2_simple.json")  # the recommended one
    assert len(run.top.parquet_dirs) == 2 and run.top.max_text_length == 448 and run.top.filter_dataset
    assert run.clip_steering and run.steering.steering_gradient_clip == 1.0
    m = run.model_config()
    assert (m.num_experts, m.steering_scale, m.pooling_kernel_size, m.pooling_position, m.pooling_type) == \
        (8, 0.1, 4, 32, "avg")
    assert (m.max_prompt_tokens, m.use_adapter) == (2048, True)
    assert (run.top.save_total_limit, run.top.logging_steps, run.top.eval_steps, run.top.save_steps) == (2, 100, 1000,
                                                                                                          1000)
    assert run.top.use_early_stopping and run.top.early_stopping_patience == 3 and run.top.steering_log_interval == 100


@pytest.mark.parametrize("text, message", [
    ("learning_rat: 0.1\n", r"unknown key 'learning_rat'; it belongs at 'training.learning_rate'|did you mean"),
    ("fp16: true\n", r"unknown key 'fp16'; it belongs at 'training.fp16'"),
    ("steering:\n  steering_learning_rate: 5e-3\n", r"unknown key 'steering.steering_learning_rate'; it belongs at "
                                                    r"'training.steering_learning_rate'"),
    ("pooling_kernal_size: 4\n", r"unknown key 'pooling_kernal_size'; did you mean 'pooling_kernel_size'\?"),
    ("training:\n  output_dir: /r\n  batch_sise: 4\n", r"unknown key 'training.batch_sise'; did you mean "
                                                       r"'training.batch_size'\?"),
])
def test_unknown_and_misplaced_keys_name_file_key_and_nearest(tmp_path, text, message):
    path = write(tmp_path, MINIMAL.replace("training: {output_dir: /r/out}\n", "") if text.startswith("training")
                 else MINIMAL, )
    path.write_text(path.read_text() + text)
    with pytest.raises(ConfigError, match=message) as err:
        load_run_config(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("extra, message", [
    ("training: {output_dir: /r, learning_rate: fast}\n", r"training.learning_rate: must be a number, got 'fast'"),
    ("training: {output_dir: /r, learning_rate: '1e-4'}\n", r"training.learning_rate: must be a number"),
    ("training: {output_dir: /r, batch_size: 0}\n", r"training.batch_size: must be greater than 0"),
    ("training: {output_dir: /r, batch_size: 2.5}\n", r"training.batch_size: must be an integer"),
    ("training: {output_dir: /r, weight_decay: -1}\n", r"training.weight_decay: must be at least 0"),
    ("training: {output_dir: /r, fp16: yes please}\n", r"training.fp16: must be true or false"),
    ("training: {output_dir: /r, fp16: true, bf16: true}\n", r"both true; choose one"),
    ("training: {output_dir: /r}\npooling_type: median\n", r"pooling_type: 'median' is not one of avg, max"),
    ("training: {output_dir: /r}\nsample_rate: 8000\n", r"sample_rate: 8000 is not one of 16000"),
    ("training: {output_dir: /r}\nmax_prompt_tokens: -5\n", r"max_prompt_tokens: must be greater than 0"),
    ("training: {output_dir: /r}\nmethod: linear\n", r"'method: linear' contradicts the file name's method"),
    ("training: {output_dir: /r}\nclip_steering_gradients: true\nsteering: {use_gradient_clipping: false}\n",
     r"disagree; they are the same switch"),
    ("training: {output_dir: /r}\nuse_early_stopping: true\n", r"use_early_stopping' needs dev evaluation"),
    ("training: {output_dir: /r}\nconformer_encoder: {model_path: /c}\n", r"exactly one of 'whisper_encoder' or"),
    ("training: {}\n", r"'training.output_dir' is required"),
])
def test_wrong_values_are_rejected_with_the_key(tmp_path, extra, message):
    path = write(tmp_path, MINIMAL.replace("training: {output_dir: /r/out}\n", "") + extra)
    with pytest.raises(ConfigError, match=message):
        load_run_config(path)


def test_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(write(tmp_path, "training: [unclosed\n"))
    with pytest.raises(ConfigError, match="a config is a YAML mapping"):
        load_run_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_run_config(tmp_path / "missing_train.yaml")
    with pytest.raises(ConfigError, match="no method"):
        load_run_config(write(tmp_path, MINIMAL, name="my_config.yaml"))
    # YAML's unsafe tags never construct Python objects
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(write(tmp_path, MINIMAL + "seed: !!python/object/apply:os.system ['true']\n"))


def test_names_follow_the_original_codes_convention():
    assert parse_name("layer_wise_whisper_qwen7b_libri_train") == ("layer_wise", "train")
    assert parse_name("layer_wise_conformer_qwen7b_libri_train_aed") == ("layer_wise", "train")
    assert parse_name("linear_whisper_qwen7b_libri_test") == ("linear", "eval")
    assert parse_name("post_encoder_whisper_qwen7b_libri_eval") == ("post_encoder", "eval")
    assert parse_name("custom") == (None, None)


def test_defaults_and_our_keys(tmp_path):
    run = load_run_config(write(tmp_path, MINIMAL + "encoder_window: 30s\nprompt_format: chat\nseed: 3\n"
                                "evaluation: {num_beams: 4, metric: cer}\nlora: {r: 4}\n",
                                name="lora_whisper_qwen7b_aishell_test.yaml"))
    assert (run.method, run.mode, run.top.seed, run.evaluation.num_beams, run.evaluation.metric) == \
        ("lora", "eval", 3, 4, "cer")
    assert run.model_config().encoder_window == "30s" and run.model_config().lora_r == 4
    assert run.training.logging_dir == "/r/out/logs" and str(run.checkpoint_dir) == "/r/out/final"
    assert str(run.eval_dir) == "/r/out/eval" and not run.clip_steering and not run.training.use_deepspeed


@pytest.mark.parametrize("value, shipped", [("stage2_offload", "stage2_offload.json"), ("stage3.json", "stage3.json"),
                                            ("stage2_simple", "stage2_simple.json")])
def test_a_shipped_deepspeed_json_is_named_without_its_path(tmp_path, value, shipped):
    import json

    text = MINIMAL.replace("training: {output_dir: /r/out}",
                           f"training: {{output_dir: /r/out, use_deepspeed: true, deepspeed_config: {value}}}")
    path = Path(load_run_config(write(tmp_path, text)).training.deepspeed_config)
    assert path == Path(__file__).parent.parent / "steermoe" / "declare" / "deepspeed" / shipped and path.is_file()
    zero = json.loads(path.read_text())["zero_optimization"]
    # the default keeps a few million trainable parameters' optimiser on the GPU; the offload variant, in host memory
    assert ("offload_optimizer" in zero) == (shipped != "stage2_simple.json")
