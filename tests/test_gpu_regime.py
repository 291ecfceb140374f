"""The GPU's precision regime rehearsed on the CPU, for every encoder type and every method.

Under DeepSpeed on a GPU the parameters are cast to bf16 (or fp16) and the buffers are not, autocast is off, and the
Trainer casts the features to the engine's dtype; under ZeRO-3 every parameter is sliced across the processes.
DeepSpeed's CPU accelerator computes bf16, so `training.bf16: true` runs that regime here: two processes over gloo,
ZeRO-2 and ZeRO-3, train a few steps, resume, and evaluate. Its CPU accelerator has no fp16: the fp16 regime is
rehearsed with DeepSpeed's own casting code (parameters cast, buffers kept) on the model's forward and backward pass.
Plain autocast bf16 without DeepSpeed trains and evaluates too.
"""
import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from steermoe.declare.settings import TRAINED_METHODS
from tests.test_distributed import BIN, ENV, STEERMOE, free_port
from tests.test_train import REPO, write_config

ENCODERS = ("whisper", "conformer", "parakeet")  # conformer: FireRedASR-AED's
METHODS = ("layer_wise", "linear", "post_encoder", "lora", "llm_lora")
# every encoder x method pair once (llm_lora with Whisper), each ZeRO stage with every encoder and every method
CELLS = [("stage2", "whisper", "layer_wise"), ("stage2", "whisper", "post_encoder"), ("stage2", "conformer", "linear"),
         ("stage2", "conformer", "lora"), ("stage2", "parakeet", "layer_wise"), ("stage2", "parakeet", "post_encoder"),
         ("stage3", "whisper", "linear"), ("stage3", "whisper", "lora"), ("stage3", "conformer", "layer_wise"),
         ("stage3", "conformer", "post_encoder"), ("stage3", "parakeet", "linear"), ("stage3", "parakeet", "lora"),
         ("stage3", "whisper", "llm_lora")]  # trainable adapters inside the sliced LLM
QUICK = {("stage2", "conformer", "lora"), ("stage3", "conformer", "layer_wise")}  # the rest: slow
STEPS = 4


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    """The tiny Whisper and Qwen2 folders, a FireRedASR-AED release folder and a Parakeet encoder folder."""
    from transformers import ParakeetEncoder

    from tests.tiny import parakeet_config, save_fireredasr_folder

    root = tmp_path_factory.mktemp("encoders")
    torch.manual_seed(0)
    ParakeetEncoder(parakeet_config()).save_pretrained(root / "parakeet")
    return {**tiny, "whisper": tiny["encoder"], "conformer": save_fireredasr_folder(root / "firered")[0],
            "parakeet": str(root / "parakeet")}


def config(folders: dict, folder: Path, encoder: str, method: str, mode: str = "train", **sections) -> Path:
    """A config of `method` on `encoder` in bf16, the steering analysis on (it reads sliced parameters)."""
    section = "whisper_encoder" if encoder == "whisper" else "conformer_encoder"
    path = write_config(folder, folders, name=f"{method}_{encoder}_qwen_tones_{mode}", **{
        "training": {"max_steps": STEPS, "bf16": True, **sections.pop("training", {})},
        "save_steps": 2, "log_steering_analysis": True, "steering_log_interval": 1,
        "evaluation": {"batch_size": 4, "max_new_tokens": 4}, **sections})
    text = yaml.safe_load(path.read_text())
    text.pop("whisper_encoder")
    text[section] = {"model_path": folders[encoder]}
    path.write_text(yaml.safe_dump(text))
    return path


def deepspeed_json(stage: str, folder: Path) -> Path:
    """The shipped JSON; ZeRO-3 with every parameter sliced across the processes (these tiny ones too, as a 7B
    model's are)."""
    name = "stage2_simple" if stage == "stage2" else stage
    shipped = json.loads((REPO / "steermoe" / "declare" / "deepspeed" / f"{name}.json").read_text())
    if stage == "stage3":
        shipped["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    path = folder / f"{stage}.json"
    path.write_text(json.dumps(shipped))
    return path


def two_processes(config: Path, ds_json: Path, cwd: Path) -> str:
    command = [str(BIN / "deepspeed"), "--master_port", str(free_port()), "--num_gpus=2", STEERMOE, "train",
               "--config", str(config), "--deepspeed_config", str(ds_json)]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout


def deepspeed_fp32_masters(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The optimiser's fp32 copy of the trainable parameters, as DeepSpeed's own zero_to_fp32 assembles it from a
    checkpoint's slices."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = (checkpoint / "latest").read_text().strip()
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=tag, exclude_frozen_parameters=True)
    return {k: v.float() for k, v in state.items()}


@pytest.mark.parametrize("stage, encoder, method", [
    pytest.param(*cell, marks=() if cell in QUICK else pytest.mark.slow, id="-".join(cell)) for cell in CELLS])
def test_two_process_deepspeed_bf16_trains_resumes_and_evaluates(folders, tmp_path, stage, encoder, method):
    from steermoe.declare.runconfig import load_run_config
    from steermoe.run.evaluate import evaluate

    train_config, ds_json = config(folders, tmp_path, encoder, method), deepspeed_json(stage, tmp_path)
    out = tmp_path / "out"
    text = two_processes(train_config, ds_json, tmp_path)
    summary = json.loads((out / "final" / "train_summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["processes"] == 2 and summary["steps"] == STEPS
    # every module computed in bf16: DeepSpeed cast the encoder, the trainable parts and the LLM alike
    assert summary["compute_dtypes"] == {"encoder": "bfloat16", "decoder": "bfloat16", "trainable": "bfloat16"}
    assert f"step {STEPS}/{STEPS} " in text and "Traceback" not in text
    final = load_file(str(out / "final" / "model.safetensors"))
    # the saved weights are DeepSpeed's fp32 masters, not their bf16 copies
    # named by DeepSpeed's own walk of the modules, which lists a module registered twice (FireRedASR's layers) twice
    masters = list(deepspeed_fp32_masters(out / f"checkpoint-{STEPS}").values())
    for key, value in final.items():
        assert value.dtype == torch.float32 and any(m.shape == value.shape and torch.equal(m, value)
                                                    for m in masters), key
    assert any(bool((v.bfloat16().float() != v).any()) for v in final.values())
    if TRAINED_METHODS[method].steering is not None:
        assert len((out / "steering_log.jsonl").read_text().splitlines()) == STEPS  # read whole under ZeRO-3 too

    # killed after checkpoint-2: the same command resumes to the same weights
    shutil.rmtree(out / "final"), shutil.rmtree(out / "finished"), shutil.rmtree(out / f"checkpoint-{STEPS}")
    resumed = two_processes(train_config, ds_json, tmp_path)
    assert f"resuming from {out}/checkpoint-2" in resumed
    again = load_file(str(out / "final" / "model.safetensors"))
    for key in final:
        torch.testing.assert_close(again[key], final[key], rtol=0, atol=1e-6, msg=key)

    test = config(folders, tmp_path, encoder, method, mode="test")
    metrics = evaluate(load_run_config(test), log=lambda *_: None)
    assert metrics["precision"] == "bf16" and metrics["utterances"] == 8


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("method", METHODS)
def test_plain_bf16_autocast_trains_and_evaluates(folders, tmp_path, encoder, method):
    from steermoe.declare.runconfig import load_run_config
    from steermoe.run.evaluate import evaluate
    from steermoe.run.train import train

    summary = train(load_run_config(config(folders, tmp_path, encoder, method, training={"max_steps": 2})),
                    log=lambda *_: None)
    assert summary["precision"] == "bf16" and summary["weights_dtype"] == "bfloat16"
    metrics = evaluate(load_run_config(config(folders, tmp_path, encoder, method, mode="test",
                                              training={"max_steps": 2})), log=lambda *_: None)
    assert metrics["precision"] == "bf16" and metrics["utterances"] == 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("encoder", ["whisper", "fireredasr", "parakeet"])
@pytest.mark.parametrize("method", METHODS)
def test_deepspeeds_own_cast_leaves_every_encoder_and_method_computing(encoder, method, dtype):
    """DeepSpeed's _cast_module_mixed_precision (parameters to the engine dtype, fp32 buffers kept), then the
    features in that dtype as the Trainer passes them: one training step's forward and backward, and greedy
    decoding. fp16 is what a V100 or T4 job runs, which DeepSpeed's CPU accelerator cannot."""
    from deepspeed.runtime.engine import DeepSpeedEngine

    from tests.tiny import features, tiny_model

    model = tiny_model(method, encoder=encoder).train()
    DeepSpeedEngine._cast_module_mixed_precision(SimpleNamespace(module=model), dtype, None, False)
    assert {p.dtype for p in model.parameters()} == {dtype}
    feats, lengths = features(encoder, [40, 28])
    out = model(feats.to(dtype), lengths, ["one two", "three"], ["say: ", "say: "])
    assert out["loss"].dtype == torch.float32 or out["loss"].dtype == dtype
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    with torch.no_grad():
        assert len(model.eval().generate(feats.to(dtype), lengths, ["say: ", "say: "], max_new_tokens=3)) == 2
