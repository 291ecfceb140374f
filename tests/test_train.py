"""Training and evaluation on tiny random models: every config key takes effect, checkpoints resume exactly."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from steermoe.declare.runconfig import load_run_config
from steermoe.errors import ConfigError, DataError, TrainingError

REPO = Path(__file__).resolve().parent.parent


def write_config(folder: Path, tiny: dict, name="layer_wise_whisper_qwen_tones_train", **sections) -> Path:
    """A small training (or evaluation) config; keyword arguments replace or extend its sections."""
    config = {
        "whisper_encoder": {"model_path": tiny["encoder"]},
        "llm_decoder": {"model_name": tiny["decoder"]},
        "steering": {"num_experts": 4},
        "training": {"output_dir": str(folder / "out"), "batch_size": 4, "max_steps": 6, "learning_rate": 1e-2,
                     "steering_learning_rate": 1e-2, "router_learning_rate": 1e-3, "weight_decay": 0.0},
        "parquet_dirs": [f"{tiny['corpus']}/{'test' if name.endswith('_test') else 'train'}.parquet"],
        "logging_steps": 1, "save_steps": 3, "textual_prompt": "say: ",
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_trainer(run):
    """The Trainer exactly as `train` builds it, without training."""
    from steermoe.model.features import AudioFeatures
    from steermoe.run.batching import Collator
    from steermoe.run.loading import filter_rows, load_model, load_rows
    from steermoe.run.train import training_arguments
    from steermoe.run.trainer import SteerMoETrainer

    model = load_model(run, "float32")
    rows = filter_rows(load_rows(run, run.top.parquet_dirs, "parquet_dirs"), model, run, "train")
    collator = Collator(AudioFeatures("whisper", 80), run.top.textual_prompt)
    return SteerMoETrainer(model=model, args=training_arguments(run, "fp32", False),
                           train_dataset=rows, data_collator=collator, run=run)


# ---- optimiser groups, clipping ------------------------------------------------------------------------------
def test_three_learning_rates_reach_the_optimiser_and_the_scheduler_scales_each(tiny, tmp_path):
    run = load_run_config(write_config(tmp_path, tiny, training={"learning_rate": 3e-4, "steering_learning_rate": 2e-2,
                                                                  "router_learning_rate": 5e-3, "warmup_steps": 4,
                                                                  "weight_decay": 0.05}))
    trainer = make_trainer(run)
    trainer.create_optimizer_and_scheduler(num_training_steps=6)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert {k: g["initial_lr"] if "initial_lr" in g else g["lr"] for k, g in groups.items()} == \
        {"steering": 2e-2, "router": 5e-3, "projection": 3e-4}
    assert all(g["weight_decay"] == 0.05 for g in groups.values())
    model = trainer.model
    assert {id(p) for p in groups["steering"]["params"]} == \
        {id(model.steering.steering_vectors), id(model.steering.layer_scales)}
    assert {id(p) for p in groups["projection"]["params"]} == {id(p) for p in model.prompt_proj.parameters()}
    # linear warmup over 4 steps scales every group by the same factor
    for _ in range(2):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs == pytest.approx({"steering": 1e-2, "router": 2.5e-3, "projection": 1.5e-4})


def test_steering_clipping_changes_the_step_exactly_when_the_norm_exceeds_the_limit():
    from steermoe.run.trainer import clip_group_hook

    def step(limit, grad_scale):
        vec = torch.nn.Parameter(torch.zeros(3))
        other = torch.nn.Parameter(torch.zeros(3))
        opt = torch.optim.SGD([{"params": [vec], "name": "steering"}, {"params": [other], "name": "router"}], lr=1.0)
        norms = []
        opt.register_step_pre_hook(clip_group_hook("steering", limit, norms))
        vec.grad = torch.tensor([3.0, 4.0, 0.0]) * grad_scale  # norm 5 * scale
        other.grad = torch.tensor([30.0, 40.0, 0.0])  # not steering: never clipped
        opt.step()
        return -vec.detach(), -other.detach(), norms

    below, other, norms = step(limit=6.0, grad_scale=1.0)  # norm 5 < 6: untouched
    assert torch.equal(below, torch.tensor([3.0, 4.0, 0.0])) and norms == [5.0]
    assert torch.equal(other, torch.tensor([30.0, 40.0, 0.0]))
    above, other, _ = step(limit=1.0, grad_scale=1.0)  # norm 5 > 1: scaled to norm 1
    assert torch.allclose(above, torch.tensor([0.6, 0.8, 0.0]), atol=1e-5)
    assert torch.equal(other, torch.tensor([30.0, 40.0, 0.0]))


@pytest.mark.parametrize("switch", [{"clip_steering_gradients": True},
                                    {"steering": {"num_experts": 4, "use_gradient_clipping": True}}])
def test_steering_clip_runs_in_training_before_the_step(tiny, tmp_path, switch):
    from steermoe.run.train import train

    run = load_run_config(write_config(tmp_path, tiny, training={"max_steps": 2, "gradient_clipping": 0.0},
                                       steering={"num_experts": 4, "steering_gradient_clip": 1e-6, **switch.get(
                                           "steering", {})}, **{k: v for k, v in switch.items() if k != "steering"}))
    before = None
    from steermoe.run.trainer import SteerMoETrainer

    seen = []
    original = SteerMoETrainer.create_optimizer

    def spy(self, model=None):
        opt = original(self, model)
        nonlocal before
        before = self.model.steering.steering_vectors.detach().clone()
        seen.append(self.steering_grad_norms)
        return opt

    SteerMoETrainer.create_optimizer = spy
    try:
        train(run, log=lambda *_: None)
    finally:
        SteerMoETrainer.create_optimizer = original
    norms = seen[0]
    assert len(norms) == 2 and all(n > 1e-6 for n in norms)  # the hook ran at every step, before clipping
    after = load_file(f"{tmp_path}/out/final/model.safetensors")["steering.steering_vectors"]
    # clipped to 1e-6 per step, Adam still moves ~lr per step: the direction is the clipped one (not zero)
    assert not torch.equal(after, before)


# ---- checkpoints -----------------------------------------------------------------------------------------------
def test_checkpoints_hold_only_trainable_parameters_and_rotate(tiny, tmp_path):
    from steermoe.run.checkpoint import COMPLETE
    from steermoe.run.train import train

    run = load_run_config(write_config(tmp_path, tiny, save_total_limit=1, save_steps=2))
    summary = train(run, log=lambda *_: None)
    out = tmp_path / "out"
    assert summary["steps"] == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]  # save_total_limit: 1
    assert (out / "checkpoint-6" / COMPLETE).is_file()
    weights = load_file(str(out / "final" / "model.safetensors"))
    model_trainable = set(summary["trainable_parameters"])
    assert set(weights) == {"steering.steering_vectors", "steering.layer_scales", "steering.router.weight",
                            "steering.router.bias", "prompt_proj.weight", "prompt_proj.bias"}
    n = sum(t.numel() for t in weights.values())
    assert n == sum(summary["trainable_parameters"].values()) and model_trainable
    assert (out / "final" / "model.safetensors").stat().st_size < 4 * n * 1.05 + 4096
    assert not list(out.rglob("*.bin"))  # no pickled model or training arguments
    assert list((out / "logs").glob("events.out.tfevents.*"))  # TensorBoard in logging_dir (default output_dir/logs)


def _run_cli(config: Path, env=None):
    return subprocess.Popen([sys.executable, "-m", "steermoe.cli", "train", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(tiny, tmp_path):
    """Killed between checkpoints and started again with the same command: the same final weights, exactly."""
    settings = dict(training={"max_steps": 12}, save_steps=4, dataloader_num_workers=0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole, killed = (write_config(tmp_path / x, tiny, **settings) for x in "ab")
    assert _run_cli(whole).wait() == 0

    proc = _run_cli(killed)
    marker = tmp_path / "b" / "out" / "checkpoint-4" / "complete.json"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "out" / "final").exists()  # killed before the end
    resumed = _run_cli(killed)
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output[-2000:]
    assert "resuming from" in output
    a = load_file(str(tmp_path / "a" / "out" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "out" / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_incomplete_corrupt_and_foreign_checkpoints_are_never_resumed(tiny, tmp_path):
    from steermoe.run.checkpoint import resume_point
    from steermoe.run.train import train

    run = load_run_config(write_config(tmp_path, tiny, training={"max_steps": 4}, save_steps=2))
    train(run, log=lambda *_: None)
    out = tmp_path / "out"
    assert resume_point(out, run) == str(out / "checkpoint-4")
    (out / "checkpoint-4" / "model.safetensors").write_bytes(b"garbage")  # corrupted
    (out / "checkpoint-6").mkdir()  # a kill mid-save: no completion marker
    messages = []
    assert resume_point(out, run, log=messages.append) == str(out / "checkpoint-2")
    assert not (out / "checkpoint-6").exists() and not (out / "checkpoint-4").exists()
    assert len(list((out / "superseded").glob("checkpoint-4-*"))) == 1  # moved aside, not deleted
    assert any("corrupted" in m for m in messages)
    other = load_run_config(write_config(tmp_path, tiny, training={"max_steps": 5}, save_steps=2))  # edited config
    assert resume_point(out, other, log=messages.append) is None
    assert any("different version of the config" in m for m in messages)


# ---- keys that take effect -------------------------------------------------------------------------------------
def test_model_keys_reach_the_model(tiny, tmp_path):
    from steermoe.run.loading import load_model

    run = load_run_config(write_config(
        tmp_path, tiny, steering={"num_experts": 3, "steering_scale": 0.25, "use_layer_scales": False},
        pooling_kernel_size=2, pooling_position=1, pooling_type="max", max_prompt_tokens=7, use_adapter=True,
        gradient_checkpointing=True, encoder_window="30s"))
    model = load_model(run, "float32")
    assert model.steering.steering_vectors.shape == (2, 3, 32)
    assert not isinstance(model.steering.layer_scales, torch.nn.Parameter)
    assert torch.equal(model.steering.layer_scales, torch.full((2,), 0.25))
    assert model.pool_at == 1 and model.config.pooling_type == "max" and model.config.pooling_kernel_size == 2
    assert model.gradient_checkpointing and model.encoder.window == "30s"
    feats = torch.randn(1, 80, 200)
    audio, lengths = model.encode(feats, torch.tensor([200]))
    assert audio.shape[1] == 7 and int(lengths[0]) == 7  # 30 s window -> 1500 frames, pooled, cut to 7


def test_encoder_dims_are_checked(tiny, tmp_path):
    from steermoe.run.loading import load_model

    run = load_run_config(write_config(tmp_path, tiny, whisper_encoder={"model_path": tiny["encoder"],
                                                                         "feature_dim": 1280, "num_layers": 2}))
    with pytest.raises(ConfigError, match=r"whisper_encoder.feature_dim is 1280 but .* has 32"):
        load_model(run, "float32")


def test_length_filters_and_columns(tiny, tmp_path):
    from steermoe.run.loading import filter_rows, load_model, load_rows

    run = load_run_config(write_config(tmp_path, tiny, max_text_length=9, max_audio_length=0.5))
    model = load_model(run, "float32")
    rows = load_rows(run, run.top.parquet_dirs, "parquet_dirs")
    kept = filter_rows(rows, model, run, "train", log=lambda *_: None)
    tokens = [len(model.tokenizer(t, add_special_tokens=False).input_ids) for t in rows.columns["text"]]
    expected = [i for i, (d, n) in enumerate(zip(rows.durations, tokens)) if d <= 0.5 and n <= 9]
    assert kept.columns["id"] == [rows.columns["id"][i] for i in expected] and 0 < len(expected) < len(rows)
    off = load_run_config(write_config(tmp_path, tiny, max_text_length=9, max_audio_length=0.5,
                                       filter_dataset=False))
    assert len(filter_rows(rows, model, off, "train")) == len(rows)
    tight = load_run_config(write_config(tmp_path, tiny, llm_decoder={"model_name": tiny["decoder"],
                                                                      "max_length": 10}))
    with pytest.raises(DataError, match="every row .* filtered out .*llm_decoder.max_length"):
        filter_rows(rows, model, tight, "train", log=lambda *_: None)
    # audio_column / text_column: any parquet, here with renamed columns and no duration column
    import pyarrow.parquet as pq

    table = pq.read_table(run.top.parquet_dirs[0]).drop(["duration"])
    table = table.rename_columns([{"audio": "wav", "text": "sentence"}.get(n, n) for n in table.column_names])
    pq.write_table(table, tmp_path / "renamed.parquet")
    custom = load_run_config(write_config(tmp_path, tiny, parquet_dirs=[str(tmp_path)], audio_column="wav",
                                          text_column="sentence"))
    renamed = load_rows(custom, custom.top.parquet_dirs, "parquet_dirs")
    assert renamed.columns["text"] == rows.columns["text"]
    assert renamed.durations == pytest.approx(rows.durations, abs=1e-3)
    bad = load_run_config(write_config(tmp_path, tiny, parquet_dirs=[str(tmp_path)], audio_column="audio"))
    with pytest.raises(DataError, match=r"renamed.parquet has no column 'audio' \(audio_column\)"):
        load_rows(bad, bad.top.parquet_dirs, "parquet_dirs")


def test_logging_eval_steps_steering_analysis_and_early_stopping(tiny, tmp_path):
    from steermoe.run.train import train

    run = load_run_config(write_config(
        tmp_path, tiny, training={"max_steps": 40, "learning_rate": 0.0, "steering_learning_rate": 0.0,
                                  "router_learning_rate": 0.0, "logging_dir": str(tmp_path / "tb")},
        logging_steps=2, eval_steps=2, save_steps=2, use_early_stopping=True, early_stopping_patience=2,
        log_steering_analysis=True, steering_log_interval=3,
        eval_parquet_dirs=[f"{tiny['corpus']}/dev.parquet"]))
    summary = train(run, log=lambda *_: None)
    # learning rates of zero: the dev loss never improves, so training stops after patience evaluations
    assert summary["steps"] == 6
    history = summary["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [2, 4, 6]
    assert [h["step"] for h in history if "eval_loss" in h] == [2, 4, 6]
    steering = [json.loads(line) for line in (tmp_path / "out" / "steering_log.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steering] == [0, 3]
    assert len(steering[0]["mean_gate"]) == 2 and len(steering[0]["mean_gate"][0]) == 4
    assert sum(steering[0]["mean_gate"][0]) == pytest.approx(1.0, abs=1e-4)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_dev_holdout_without_eval_parquet_dirs(tiny, tmp_path):
    from steermoe.run.loading import dev_holdout, load_rows

    run = load_run_config(write_config(tmp_path, tiny))
    rows = load_rows(run, run.top.parquet_dirs, "parquet_dirs")
    train_rows, dev = dev_holdout(rows)
    assert len(dev) == 1 and len(train_rows) == len(rows) - 1
    assert set(dev.columns["id"]).isdisjoint(train_rows.columns["id"])
    assert dev_holdout(rows)[1].columns["id"] == dev.columns["id"]  # always the same rows


def test_nan_loss_stops_with_a_clear_message(tiny, tmp_path):
    """A steering scale so large that the first forward pass overflows (a NaN scale is refused by the config)."""
    from steermoe.run.train import train

    run = load_run_config(write_config(tmp_path, tiny, steering={"num_experts": 4, "steering_scale": 1e38}))
    with pytest.raises(TrainingError, match="loss became nan at step 1.*checkpoint .* is kept"):
        train(run, log=lambda *_: None)


def test_train_refuses_an_evaluation_config(tiny, tmp_path):
    from steermoe.run.train import train

    with pytest.raises(ConfigError, match="is an evaluation config"):
        train(load_run_config(write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_tones_test")))


# ---- evaluation ------------------------------------------------------------------------------------------------
def test_evaluate_decodes_the_whole_split_deterministically(tiny, tmp_path):
    from steermoe.run.evaluate import evaluate
    from steermoe.run.train import train

    train(load_run_config(write_config(tmp_path, tiny, training={"max_steps": 2})), log=lambda *_: None)
    test = load_run_config(write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_tones_test",
                                        evaluation={"batch_size": 3, "max_new_tokens": 6}))
    first = evaluate(test, log=lambda *_: None)
    lines = [json.loads(x) for x in (tmp_path / "out" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == first["utterances"] == 8  # every test utterance, in the split's order
    assert [x["id"] for x in lines] == [f"test-{i:03d}" for i in range(8)]
    assert first["decoding"] == {"strategy": "greedy", "num_beams": 1, "repetition_penalty": 1.0, "sampling": False,
                                 "max_new_tokens": 6, "batch_size": 3}
    assert first["protocol"] == "honest"
    assert first["checkpoint_sha256"] and first["rtf"] > 0 and first["ci95"][0] <= first["value"] <= first["ci95"][1]
    assert sum(x["errors"] for x in lines) == first["substitutions"] + first["deletions"] + first["insertions"]
    for name in ("metrics.json", "steering.json", "steering.png"):
        assert (tmp_path / "out" / "eval" / name).is_file()
    summary = json.loads((tmp_path / "out" / "final" / "train_summary.json").read_text())
    for record in (first, summary):  # the precision policy's choice and the device, in both
        assert record["precision"] in ("fp32", "bf16", "fp16") and record["weights_dtype"] in ("float32", "bfloat16")
        assert record["device_model"] and "cpu_flags" in record and record["precision_reason"]
    assert first["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu") and first["processes"] == 1
    # batch size does not change a single hypothesis
    again = evaluate(load_run_config(write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_tones_test",
                                                  evaluation={"batch_size": 8, "max_new_tokens": 6})),
                     output_dir=tmp_path / "again", log=lambda *_: None)
    relines = [json.loads(x) for x in (tmp_path / "again" / "predictions.jsonl").read_text().splitlines()]
    assert [x["hypothesis"] for x in relines] == [x["hypothesis"] for x in lines]
    assert again["value"] == first["value"]


def test_the_original_protocol_samples_the_datasets_subset_once_per_seed(tiny, tmp_path):
    from steermoe.declare.protocols import ORIGINAL_SAMPLING, original_subset
    from steermoe.run.evaluate import evaluate
    from steermoe.run.loading import load_rows
    from steermoe.run.train import train

    train(load_run_config(write_config(tmp_path, tiny, training={"max_steps": 1})), log=lambda *_: None)
    config = write_config(tmp_path, tiny, name="layer_wise_whisper_qwen_tones_test",
                          parquet_dirs=[f"{tiny['corpus']}/train.parquet"],  # 32 rows: a subset of 2
                          evaluation={"protocol": "original", "sampling_seeds": 2, "max_new_tokens": 6,
                                      "batch_size": 1})
    run = load_run_config(config)
    result = evaluate(run, output_dir=tmp_path / "seed", log=lambda *_: None)
    assert result["protocol"] == "original" and result["utterances"] == 2 and len(result["seed_values"]) == 2
    assert result["decoding"]["strategy"] == "sampling" and result["decoding"]["top_k"] == ORIGINAL_SAMPLING["top_k"]
    assert "2 of 32 rows" in result["decoding"]["subset"]
    lines = [json.loads(x) for x in (tmp_path / "seed" / "predictions.jsonl").read_text().splitlines()]
    ids = load_rows(run, run.top.parquet_dirs, "parquet_dirs").columns["id"]
    assert [x["id"] for x in lines] == [ids[i] for i in original_subset(32)]
    assert all(len(x["hypotheses"]) == 2 and x["hypotheses"][0] == x["hypothesis"] for x in lines)
    again = evaluate(run, output_dir=tmp_path / "again", log=lambda *_: None)  # seeded: the same draws
    assert (tmp_path / "again" / "predictions.jsonl").read_bytes() == \
        (tmp_path / "seed" / "predictions.jsonl").read_bytes()
    assert again["value"] == result["value"]


def test_evaluation_puts_the_model_and_every_batch_on_the_chosen_device(tiny, tmp_path, monkeypatch):
    """The meta device stands in for a GPU: what is not moved there stays on the CPU and is seen."""
    from steermoe.model.modeling import SteerMoEModel
    from steermoe.run.evaluate import evaluate
    from steermoe.run.train import train

    # linear: the steering report would read the (dataless) meta weights
    train(load_run_config(write_config(tmp_path, tiny, name="linear_whisper_qwen_tones_train",
                                       training={"max_steps": 1})), log=lambda *_: None)
    seen = []

    def placed(model, features, feature_lengths, prompts, **options):
        seen.append({features.device.type, feature_lengths.device.type}
                    | {t.device.type for t in [*model.parameters(), *model.buffers()]})
        return ["a"] * len(features)

    monkeypatch.setattr(SteerMoEModel, "generate", placed)
    config = write_config(tmp_path, tiny, name="linear_whisper_qwen_tones_test", evaluation={"batch_size": 3})
    result = evaluate(load_run_config(config), output_dir=tmp_path / "eval", device=torch.device("meta"),
                      log=lambda *_: None)
    assert len(seen) == 3 and all(devices == {"meta"} for devices in seen)  # 8 utterances in batches of 3
    assert result["device"] == "meta"


def test_evaluation_loads_the_run_without_importing_the_trainer():
    """An evaluation job starts without the Trainer stack: evaluate shares run/loading.py with train, not train."""
    code = ("import sys, steermoe.run.evaluate; "
            "print(sorted(m for m in ('steermoe.run.train', 'transformers.trainer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_evaluate_refuses_a_checkpoint_of_another_method(tiny, tmp_path):
    from steermoe.run.evaluate import evaluate
    from steermoe.run.train import train

    train(load_run_config(write_config(tmp_path, tiny, training={"max_steps": 1})), log=lambda *_: None)
    linear = load_run_config(write_config(tmp_path, tiny, name="linear_whisper_qwen_tones_test"))
    with pytest.raises(ConfigError, match="does not fit this config's model"):
        evaluate(linear, checkpoint=tmp_path / "out" / "final", log=lambda *_: None)
    with pytest.raises(ConfigError, match="has no model.safetensors: train first"):
        evaluate(linear, checkpoint=tmp_path / "nowhere", log=lambda *_: None)


def test_batch_size_epochs_prompt_clipping_cache_and_workers_take_effect(tiny, tmp_path):
    from steermoe.run.train import train

    run = load_run_config(write_config(
        tmp_path, tiny, training={"max_steps": -1, "epochs": 2, "batch_size": 8, "gradient_clipping": 0.5},
        textual_prompt="spell it: ", dataloader_num_workers=1, llm_decoder={"model_name": tiny["decoder"],
                                                                            "use_cache": True}))
    trainer = make_trainer(run)
    assert trainer.args.max_grad_norm == 0.5 and trainer.args.per_device_train_batch_size == 8
    loader = trainer.get_train_dataloader()
    assert loader.num_workers == 1
    batch = next(iter(loader))
    assert len(batch["targets"]) == 8 and set(batch["prompts"]) == {"spell it: "}
    out = trainer.model(batch["features"], batch["feature_lengths"], batch["targets"], batch["prompts"],
                        use_cache=run.decoder.use_cache)
    assert out.past_key_values is not None  # llm_decoder.use_cache reaches the decoder
    summary = train(run, log=lambda *_: None)
    assert summary["steps"] == 2 * 32 // 8  # 32 rows, batch 8, 2 epochs
    assert all(h["grad_norm"] >= 0 for h in summary["log_history"] if "grad_norm" in h)


# ---- DeepSpeed (CPU, gloo) and the original code's own example ---------------------------------------------
def _cli_train(config: Path) -> subprocess.CompletedProcess:
    """DeepSpeed runs in its own process: it sets up a process group that would leak into later tests."""
    return subprocess.run([sys.executable, "-m", "steermoe.cli", "train", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("stage", ["stage2_simple", "stage3"])
def test_deepspeed_zero_on_cpu_trains_to_the_same_loss_as_plain_training(tiny, tmp_path, stage):
    settings = dict(training={"max_steps": 8}, save_steps=4, clip_steering_gradients=True,
                    steering={"num_experts": 4, "steering_gradient_clip": 0.05})
    (tmp_path / "plain").mkdir()
    (tmp_path / "ds").mkdir()
    plain = write_config(tmp_path / "plain", tiny, **settings)
    ds = write_config(tmp_path / "ds", tiny, **{**settings, "training": {
        "max_steps": 8, "use_deepspeed": True,
        "deepspeed_config": str(REPO / "steermoe" / "declare" / "deepspeed" / f"{stage}.json")}})
    runs = {name: _cli_train(path) for name, path in (("plain", plain), ("ds", ds))}
    for name, proc in runs.items():
        assert proc.returncode == 0, (name, proc.stdout[-3000:], proc.stderr[-3000:])
    losses = {name: [h["loss"] for h in json.loads(
        (tmp_path / name / "out" / "final" / "train_summary.json").read_text())["log_history"] if "loss" in h]
        for name in runs}
    assert len(losses["plain"]) == 8
    assert losses["ds"] == pytest.approx(losses["plain"], rel=1e-4, abs=1e-5)
    # only trainable parameters in DeepSpeed's own checkpoint too (no frozen encoder/decoder weights)
    states = list((tmp_path / "ds" / "out" / "checkpoint-8").rglob("*model_states.pt"))
    assert states and all(p.stat().st_size < 200_000 for p in states)
    # pickles only in DeepSpeed's own files (global_step*/); our scheduler and RNG state in JSON and safetensors
    from steermoe.run.checkpoint import unsafe_files

    out = tmp_path / "ds" / "out"
    names = [str(p.relative_to(out / "checkpoint-4")) for p in (out / "checkpoint-4").rglob("*") if p.is_file()]
    assert {"scheduler.json", "rng_state.safetensors", "rng_state.json"} <= set(names)
    assert not unsafe_files(names, deepspeed=True)
    assert {Path(n).parts[0] for n in unsafe_files(names, deepspeed=False)} == {"global_step4", "latest",
                                                                               "zero_to_fp32.py", "zero_to_torch.py"}
    # resumed from checkpoint-4: exactly the weights of the uninterrupted run
    whole = load_file(str(out / "final" / "model.safetensors"))
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "finished")  # as if killed before the run finished
    resumed = _cli_train(ds)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    again = load_file(str(out / "final" / "model.safetensors"))
    for key in whole:
        assert torch.equal(whole[key], again[key]), key


def test_the_original_example_with_paths_changed_trains(tiny, tmp_path):
    """The original code's example config, only its paths changed: DeepSpeed and fp16 requested on a CPU."""
    text = (Path(__file__).parent / "data" / "layer_wise_whisper_qwen7b_libri_train.yaml").read_text()
    for old, new in (("/mnt/models/whisper-large-v3/", tiny["encoder"]),
                     ("/mnt/models/Qwen2.5-7B-Instruct/", tiny["decoder"]),
                     ("/mnt/results/", f"{tmp_path}/results/"), ("/mnt/logs/", f"{tmp_path}/logs/"),
                     ("/mnt/processed_datasets/librispeech_asr/train.clean.100/", f"{tiny['corpus']}/train.parquet"),
                     ("/mnt/processed_datasets/librispeech_asr/train.clean.360/", f"{tiny['corpus']}/dev.parquet")):
        assert old in text
        text = text.replace(old, new)
    text = text.replace("feature_dim: 1280", "feature_dim: 32").replace("num_layers: 32", "num_layers: 2")
    text = text.replace("pooling_position: 32", "pooling_position: 2")  # the last layer, as in the original code
    config = tmp_path / "layer_wise_whisper_qwen7b_libri_train.yaml"
    config.write_text(text)
    proc = _cli_train(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "results" / "layer_wise_steermoe_qwen7b_whisper_libri"
    summary = json.loads((out / "final" / "train_summary.json").read_text())
    assert summary["precision"] == ("fp16" if torch.cuda.is_available() else "fp32")  # DeepSpeed on CPU: fp32
    assert summary["steps"] == 10 * -(-(36 - 1) // 4)  # 36 rows, 1 held out as dev data, batch 4, 10 epochs
    assert list((tmp_path / "logs" / "layer_wise_steermoe_qwen7b_whisper_libri").glob("events.out.tfevents.*"))
