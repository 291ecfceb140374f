"""A checkpoint's training state as safetensors and JSON, so that resuming never unpickles a file.

The Hugging Face Trainer would torch.save the optimiser, scheduler, gradient scaler and RNG states (pickles:
optimizer.pt, scheduler.pt, scaler.pt, rng_state.pth); SteerMoETrainer writes and reads them with these functions.
Tensors go to safetensors, everything else (hyper-parameters, counters, Python and NumPy RNG states) to JSON.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from steermoe.errors import TrainingError
from steermoe.fsutil import write_json

OPTIMIZER = "optimizer.safetensors"  # per-parameter state tensors, keyed "<parameter name>/<state key>"
OPTIMIZER_INDEX = "optimizer.json"  # parameter groups (hyper-parameters, parameter names); non-tensor state
SCHEDULER = "scheduler.json"
SCALER = "scaler.json"
SAFE_SUFFIXES = (".safetensors", ".json")


def _parameter_names(optimizer, model) -> list[str]:
    """The optimiser's parameters by name, in the order of its state_dict's integer ids."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def save_optimizer(optimizer, model, folder: Path) -> None:
    state = optimizer.state_dict()
    names = _parameter_names(optimizer, model)
    tensors, other = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{names[index]}/{key}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(names[index], {})[key] = value
    save_file(tensors, str(folder / OPTIMIZER))
    write_json(folder / OPTIMIZER_INDEX, {
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in state["param_groups"]],
        "state": other})


def load_optimizer(optimizer, model, folder: Path) -> None:
    index = json.loads((folder / OPTIMIZER_INDEX).read_text())
    names = _parameter_names(optimizer, model)
    saved = [name for group in index["param_groups"] for name in group["params"]]
    if saved != names:
        raise TrainingError(f"{folder / OPTIMIZER_INDEX} holds the state of other parameters ({saved[:3]}) than this "
                            f"model trains ({names[:3]}); move the checkpoint folder away to start afresh")
    ids = {name: i for i, name in enumerate(names)}
    state: dict[int, dict] = {}
    for key, value in load_file(str(folder / OPTIMIZER)).items():
        name, _, field = key.rpartition("/")
        state.setdefault(ids[name], {})[field] = value
    for name, values in index["state"].items():
        state.setdefault(ids[name], {}).update(values)
    groups = [{**group, "params": [ids[n] for n in group["params"]]} for group in index["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_stem(process_index: int, world_size: int) -> str:
    """One RNG state per process, named as the Trainer names its rng_state*.pth files."""
    return "rng_state" if world_size <= 1 else f"rng_state_{process_index}"


def save_rng(folder: Path, stem: str) -> None:
    """Torch generator states (uint8 tensors) to safetensors; Python's and NumPy's Mersenne Twisters to JSON."""
    tensors = {"cpu": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()  # this process's device
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    folder.mkdir(parents=True, exist_ok=True)  # another process may not have created the checkpoint folder yet
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    write_json(folder / f"{stem}.json", {"python": [version, list(python_state), gauss],
                                         "numpy": [kind, keys.tolist(), pos, has_gauss, cached]})


def load_rng(folder: Path, stem: str) -> bool:
    """Restore the states save_rng wrote; False when the checkpoint has none for this process."""
    if not (folder / f"{stem}.safetensors").is_file():
        return False
    tensors = load_file(str(folder / f"{stem}.safetensors"))
    torch.random.set_rng_state(tensors["cpu"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    states = json.loads((folder / f"{stem}.json").read_text())
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return True


def unsafe_files(names, deepspeed: bool) -> list[str]:
    """Checkpoint files that are neither safetensors nor JSON. In a DeepSpeed run, DeepSpeed's own checkpoint
    (global_step*/ with its pickled model and optimiser states, `latest`, its zero_to_*.py scripts) is allowed."""
    def allowed(name: str) -> bool:
        if name.endswith(SAFE_SUFFIXES):
            return True
        return deepspeed and (name.startswith("global_step") or name in ("latest", "zero_to_fp32.py",
                                                                         "zero_to_torch.py"))
    return [name for name in names if not allowed(name)]
