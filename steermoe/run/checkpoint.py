"""Checkpoints: what a trained folder and a checkpoint hold, how they are written, marked complete, checked
and loaded, and where a run resumes.

A trained folder (checkpoint-N/, finished/ or final/) holds the trainable parameters only (WEIGHTS, safetensors)
and what they were trained with (META). A finished training is final: finished/ (complete, with the config it was
trained with) is written once and never trained on; final/, what evaluation and the workflow read, holds hard links
to its files, so that a workflow that deletes final/ before re-running the job gets the same bytes back.

The Hugging Face Trainer would torch.save the optimiser, scheduler, gradient scaler and RNG states (pickles:
optimizer.pt, scheduler.pt, scaler.pt, rng_state.pth); SteerMoETrainer writes and reads them with the functions here
instead: tensors to safetensors, everything else (hyper-parameters, counters, Python and NumPy RNG states) to JSON,
so that resuming never unpickles a file. A checkpoint counts only once its COMPLETE
marker (every file's hash) is written, last.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from steermoe.declare.outputs import FINAL, META, SUMMARY, WEIGHTS
from steermoe.errors import ConfigError, TrainingError
from steermoe.fsutil import replace_dir, sha256_file, storage_errors, write_atomic, write_json

if TYPE_CHECKING:
    from steermoe.declare.runconfig import RunConfig

COMPLETE = "complete.json"  # written last into a checkpoint: file hashes; no marker means not complete
FINISHED = "finished"  # the finished training, beside checkpoint-N/; final/ links to its files
FINAL_FILES = (WEIGHTS, META, SUMMARY)
TRAINED_CONFIG = "config.yaml"  # in finished/: the config's text, to name what another config changes


# ---- optimiser, scheduler, scaler and RNG state ---------------------------------------------------------
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


# ---- trained weights ---------------------------------------------------------------------------------------
RESUMES = "training resumes from the last complete checkpoint"  # what a failed write keeps


def gathered(params):
    """A context in which ZeRO-3's slices of `params` are whole on every process (every process must enter it
    together); a no-op for parameters that are not sliced."""
    sliced = [p for p in params if hasattr(p, "ds_id")]  # ZeRO-3 marks its own
    if not sliced:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(sliced)


def whole_trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters, whole, as fp32 CPU copies: under DeepSpeed its optimiser's fp32 master weights (the
    module's own are bf16/fp16 copies of them). Under ZeRO each process holds a slice, so every process must call
    this: together they assemble the trainable parameters, never the frozen models."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if any(hasattr(p, "ds_id") or getattr(p, "_hp_mapping", None) is not None for p in params.values()):
        from deepspeed.utils import safe_get_full_fp32_param

        masters = {name: safe_get_full_fp32_param(p) for name, p in params.items()}  # collective, in name order
        if all(m is not None for m in masters.values()):
            return {name: m.to("cpu", torch.float32, copy=True) for name, m in masters.items()}
    with gathered(params.values()):
        return {k: v.to("cpu", torch.float32, copy=True) for k, v in model.trainable_state_dict().items()}


def save_trainable(state: dict[str, torch.Tensor], folder: Path, run: RunConfig) -> None:
    """A trained folder: the trainable parameters (whole_trainable_state) and what they were trained with."""
    folder.mkdir(parents=True, exist_ok=True)
    # one metadata key: safetensors writes several in a random order, and the same weights must give the same
    # bytes (evaluation and the table record the file's hash); the config's hash is in META beside it
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS),
              metadata={"format": "pt"})
    write_json(folder / META, {"config": run.name, "config_sha256": run.sha256, "method": run.method,
                               "model": run.model_config().to_dict(),
                               "encoder": str(run.encoder.model_path), "decoder": str(run.decoder.model_name)})


def check_weights_file(path: Path) -> None:
    """A weights file whose safetensors header reads (cheap: the tensors are not loaded)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as weights:
            weights.keys()
    except Exception as err:  # SafetensorError, or an OSError for a folder or unreadable file
        raise ConfigError(f"{path} is not a readable safetensors weights file ({type(err).__name__}: {err}): it was "
                          f"cut short or overwritten; train again (move {Path(path).parent} away) or point "
                          f"evaluation.checkpoint at another trained folder") from None


def load_trainable(model, folder: Path) -> str:
    """Load a trained folder's weights into the model (safetensors only); returns the weights' sha256."""
    path = Path(folder) / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"{folder} has no {WEIGHTS}: train first (`steermoe train --config ...`), or point "
                          f"evaluation.checkpoint at a trained folder")
    check_weights_file(path)
    state = load_file(str(path))
    expected = set(model.trainable_state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit this config's model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}): was it trained with another method or encoder/decoder?")
    model.load_state_dict(state, strict=False)
    return sha256_file(path)


# ---- completion and resuming ---------------------------------------------------------------------------------
def mark_complete(folder: Path, step: int, config_sha256: str) -> None:
    """Write the completion marker, last: every file of the checkpoint with its hash, and the config's hash."""
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    write_json(folder / COMPLETE, {"step": step, "config_sha256": config_sha256, "files": files})


def remove_old_checkpoints(output_dir: Path, limit: int, keep: str | None) -> None:
    """Keep the `limit` newest complete checkpoints and the one named `keep` (the best so far); remove the rest."""
    for old in complete_checkpoints(output_dir)[limit:]:
        if old.name != keep:
            shutil.rmtree(old)


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoint folders with a completion marker, newest first."""
    found = [p for p in output_dir.glob("checkpoint-*") if (p / COMPLETE).is_file() and p.name[11:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[11:]), reverse=True)


def resume_point(output_dir: Path, run: RunConfig, log=print) -> str | None:
    """The newest intact checkpoint of this config. Incomplete folders (a kill mid-save) are removed; corrupted
    ones and those of another config are moved aside, never deleted, as is the finished training of an earlier
    version of the config (supersede_finished)."""
    supersede_finished(output_dir, run, log)
    for folder in output_dir.glob("checkpoint-*"):
        if not (folder / COMPLETE).is_file():
            log(f"removing incomplete checkpoint {folder} (interrupted while saving)")
            shutil.rmtree(folder)
    for folder in complete_checkpoints(output_dir):
        marker = json.loads((folder / COMPLETE).read_text())
        problem = None
        unlisted = sorted({str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
                          - set(marker["files"]) - {COMPLETE})
        unsafe = unsafe_files(marker["files"], run.training.use_deepspeed)
        if marker.get("config_sha256") != run.sha256:
            problem = "was written by a different version of the config"
        elif unlisted:
            problem = f"holds files its {COMPLETE} does not list ({', '.join(unlisted[:3])}); they are never loaded"
        elif unsafe:
            problem = (f"holds pickled state ({', '.join(unsafe[:3])}; an older steermoe wrote such files), which is "
                       f"never loaded")
        else:
            for name, digest in marker["files"].items():
                if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                    problem = f"is corrupted ({name} does not match its hash)"
                    break
        if problem is None:
            return str(folder)
        aside = output_dir / "superseded" / f"{folder.name}-{int(time.time())}"
        aside.parent.mkdir(exist_ok=True)
        folder.rename(aside)
        log(f"checkpoint {folder.name} {problem}: moved to {aside}")
    return None


# ---- a finished training ---------------------------------------------------------------------------------------
def save_finished(state: dict[str, torch.Tensor], summary: dict, output_dir: Path, run: RunConfig) -> Path:
    """Write finished/ (weights, META, the summary, the config's text; marked complete) and link final/ to it.
    Each folder appears whole or not at all."""
    building, finished = output_dir / f".{FINISHED}.partial", output_dir / FINISHED
    shutil.rmtree(building, ignore_errors=True)
    with storage_errors(building, "final weights", RESUMES, partial=building):
        save_trainable(state, building, run)
        write_json(building / SUMMARY, summary)
        write_atomic(building / TRAINED_CONFIG, run.path.read_bytes())
        mark_complete(building, summary["steps"], run.sha256)
        replace_dir(building, finished)
        link_final(finished, output_dir / FINAL)
    return output_dir / FINAL


def link_final(finished: Path, final: Path) -> None:
    """final/ as hard links to finished/'s weights, META and summary (copies where links are not possible)."""
    building = final.parent / f".{final.name}.partial"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    for name in FINAL_FILES:
        try:
            os.link(finished / name, building / name)
        except OSError:
            shutil.copy2(finished / name, building / name)
    replace_dir(building, final)


def _intact(folder: Path) -> bool:
    """A folder whose completion marker lists only files that exist with their hashes."""
    try:
        marker = json.loads((folder / COMPLETE).read_text())
        return all(sha256_file(folder / name) == digest for name, digest in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _flat(mapping, prefix: str = "") -> dict:
    out = {}
    for key, value in (mapping.items() if isinstance(mapping, dict) else ()):
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def config_difference(trained_text: bytes, run: RunConfig, limit: int = 6) -> str:
    """The keys in which `run`'s config differs from the config text a training was done with, in words."""
    from steermoe.declare.checks import load_yaml

    try:
        before = _flat(load_yaml(trained_text.decode("utf-8"), TRAINED_CONFIG))
        after = _flat(load_yaml(run.path.read_text(encoding="utf-8"), str(run.path)))
    except (ConfigError, OSError, UnicodeDecodeError):
        return "its text differs"
    changed = [f"{key}: {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}"
               for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    if not changed:
        return "only in formatting"
    return "; ".join(changed[:limit]) + (f"; and {len(changed) - limit} more" if len(changed) > limit else "")


def finished_training(output_dir: Path, run: RunConfig, log=print, tidy: bool = True) -> dict | None:
    """The summary of this config's finished training in `output_dir` (final/ re-linked if it lost files), or None
    when there is none and training should run. A finished training of another config is refused with the
    difference named, never overwritten; one of an earlier version of this config file is left for resume_point
    to move aside once training starts. tidy: this process may write (process 0 of a launch)."""
    finished, final = output_dir / FINISHED, output_dir / FINAL
    if tidy and not _intact(finished) and _adoptable(final, run):  # final/ of a version before finished/ existed
        building = output_dir / f".{FINISHED}.partial"
        shutil.rmtree(building, ignore_errors=True)
        shutil.copytree(final, building)
        write_atomic(building / TRAINED_CONFIG, run.path.read_bytes())
        mark_complete(building, json.loads((final / SUMMARY).read_text())["steps"], run.sha256)
        replace_dir(building, finished)
    if not _intact(finished):
        return None
    meta = json.loads((finished / META).read_text())
    if meta.get("config_sha256") == run.sha256:
        if tidy and any(not (final / n).is_file() or not (final / n).samefile(finished / n) for n in FINAL_FILES):
            link_final(finished, final)
            log(f"{final}: restored from {finished}")
        summary = json.loads((finished / SUMMARY).read_text())
        log(f"{run.name}: already trained ({summary['steps']} steps; {finished}); nothing to do. To train again, "
            f"move {output_dir} away")
        return summary
    if meta.get("config") != run.name:
        difference = config_difference((finished / TRAINED_CONFIG).read_bytes(), run)
        raise ConfigError(f"{run.path}: training.output_dir {output_dir} holds the finished training of another "
                          f"config, {meta.get('config')} (differences: {difference}); give this config its own "
                          f"output_dir, or move {output_dir} away")
    return None


def supersede_finished(output_dir: Path, run: RunConfig, log=print) -> None:
    """Move the finished training of an earlier version of this config (and final/) to superseded/: the edited
    config trains afresh, and nothing is lost."""
    finished = output_dir / FINISHED
    if not _intact(finished) or json.loads((finished / META).read_text()).get("config_sha256") == run.sha256:
        return
    difference = config_difference((finished / TRAINED_CONFIG).read_bytes(), run)
    aside = output_dir / "superseded" / f"{FINISHED}-{int(time.time())}"
    aside.parent.mkdir(exist_ok=True)
    finished.rename(aside)
    shutil.rmtree(output_dir / FINAL, ignore_errors=True)
    log(f"{finished} was trained with an earlier version of {run.path.name} ({difference}): moved to {aside}; "
        f"training afresh")


def _adoptable(final: Path, run: RunConfig) -> bool:
    try:
        meta = json.loads((final / META).read_text())
        return (final / WEIGHTS).is_file() and (final / SUMMARY).is_file() and \
            meta.get("config_sha256") == run.sha256
    except (OSError, ValueError):
        return False


def training_is_over(checkpoint: Path, patience: int | None) -> bool:
    """Whether a checkpoint was saved when training had ended (its last step, or early stopping's patience spent):
    resuming from it must finish the run without another step. patience: early stopping's, None when it is off."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    if 0 < state["max_steps"] <= state["global_step"]:
        return True
    stopper = state.get("stateful_callbacks", {}).get("EarlyStoppingCallback", {})
    counter = stopper.get("attributes", {}).get("early_stopping_patience_counter", 0)
    return patience is not None and counter >= patience
