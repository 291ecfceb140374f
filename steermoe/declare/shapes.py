"""Model shapes by name, without torch: the shapes shipped in steermoe/model/shapes/ (a model's config.json subset and,
as `_parameters`, the parameter count of the module steermoe builds from it: the encoder, or the whole causal LM),
which catalog entry each model is read from, and its parameter count, for the workflow's memory requests
(steermoe/report/memory.py) while the Snakefile parses.
"""
from __future__ import annotations

import json
import math
import struct
from functools import lru_cache
from pathlib import Path

SHAPES = Path(__file__).parent.parent / "model" / "shapes"
MODEL_FOLDER_FILES = ("config.json", "model.pth.tar")  # a Hugging Face folder, or a FireRedASR-AED release
ENCODER_PREFIXES = ("model.encoder.", "encoder.")  # a whole Whisper checkpoint's encoder tensors


def shipped_shapes() -> list[str]:
    return sorted(p.stem for p in SHAPES.glob("*.json"))


def shape_source(entry: dict, root: Path) -> tuple[str | None, str]:
    """A model folder if it exists, else a shipped shape by the entry's shape / embedded / folder / catalog name."""
    path = entry.get("path")
    if path and any((root / path / name).is_file() for name in MODEL_FOLDER_FILES):
        return str(root / path), str(path)
    shapes = {s.lower(): s for s in shipped_shapes()}
    folder = Path(path).name if path else None
    for name in (entry.get("shape"), entry.get("embedded"), folder, folder and folder.lower().removesuffix("-hf"),
                 entry.get("name")):
        if name and name.lower() in shapes:
            shape = shapes[name.lower()]
            return shape, f"shape {shape}" + (f" ({path} not there)" if path else "")
    return None, f"unknown ({path or entry.get('name')} not there, no shipped shape of that name)"


@lru_cache(maxsize=None)
def parameter_count(source: str, encoder: bool) -> int | None:
    """Parameters of the module steermoe builds from `source` (shape_source's): a shipped shape's `_parameters`, else
    the tensors in the folder's safetensors headers (of a whole Whisper checkpoint, the encoder's); None where
    neither says (a FireRedASR release's model.pth.tar needs torch to read)."""
    shipped = SHAPES / f"{source}.json"
    if shipped.is_file():
        return json.loads(shipped.read_text()).get("_parameters")
    shapes = {}
    for file in sorted(Path(source).glob("*.safetensors")):
        shapes.update(_safetensors_shapes(file))
    if not shapes:
        return None
    if encoder and any(name.startswith(ENCODER_PREFIXES) for name in shapes):
        shapes = {name: shape for name, shape in shapes.items() if name.startswith(ENCODER_PREFIXES)}
    return sum(math.prod(shape) for shape in shapes.values())


def _safetensors_shapes(file: Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors file's header (an 8-byte little-endian length, then JSON)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: value["shape"] for name, value in header.items() if name != "__metadata__"}
