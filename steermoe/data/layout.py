"""The common prepared-data layout and the one pipeline every preparer feeds.

A prepared corpus is a folder:
    {split}.parquet   one row per utterance (SCHEMA): FLAC bytes (16 kHz mono, 16-bit), duration, text, ...
    manifest.json     counts, hours, speakers per split; the filters applied; what was dropped and why
    rejects.jsonl     every dropped item: split, id, source, reason
Features are never stored: the collator computes them on the fly.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from steermoe.data.audio import AudioError, decode, encode_flac
from steermoe.declare.settings import SAMPLE_RATE
from steermoe.errors import DataError
from steermoe.fsutil import replace_dir

FORMAT_VERSION = 1
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("audio", pa.binary()),  # FLAC, 16 kHz mono, PCM_16
    ("duration", pa.float32()),  # seconds
    ("text", pa.string()),  # the target
    ("prompt", pa.string()),  # optional per-sample prompt / question
    ("answers", pa.list_(pa.string())),  # optional reference answers (QA)
    ("speaker", pa.string()),
    ("language", pa.string()),
])


@dataclass
class RawItem:
    """One utterance as a reader found it: audio is a path or encoded bytes, not yet decoded."""
    id: str
    audio: str | bytes
    text: str
    source: str  # where it came from, for the rejects file (path, or file:line)
    speaker: str = ""
    language: str = "en"
    prompt: str | None = None
    answers: list[str] | None = None


@dataclass
class Reject:
    """An item a reader could not even form (malformed line, missing audio file). `reason` is a fixed category."""
    id: str
    source: str
    reason: str
    detail: str = ""


@dataclass
class Filters:
    filter_dataset: bool = True
    max_audio_length: float = 30.0  # seconds
    max_text_characters: int = 448  # characters of the transcript (training's max_text_length counts tokens)


@dataclass
class _Outcome:
    row: dict | None = None
    drop: str | None = None  # "rejected" (bad data) or "filtered" (length filter)
    reason: str = ""
    item: dict = field(default_factory=dict)


def clean_text(text: str) -> str:
    """A transcript without control characters (NUL, escapes: what a broken export leaves), stripped."""
    return "".join(c for c in text if c.isspace() or unicodedata.category(c) != "Cc").strip()


def _process(args) -> _Outcome:
    item, filters = args
    meta = {"id": item.id, "source": item.source}
    text = clean_text(item.text)
    if not text:
        return _Outcome(drop="rejected", reason="empty transcript", item=meta)
    if isinstance(item.audio, str) and not os.path.isfile(item.audio):
        return _Outcome(drop="rejected", reason="audio file not found", item={**meta, "detail": item.audio})
    try:
        audio = decode(item.audio)
    except AudioError as err:
        return _Outcome(drop="rejected", reason=err.reason, item={**meta, "detail": err.detail})
    duration = len(audio) / SAMPLE_RATE
    if filters.filter_dataset:
        if duration > filters.max_audio_length:
            return _Outcome(drop="filtered", reason=f"audio longer than max_audio_length "
                                                    f"({filters.max_audio_length:g} s)", item=meta)
        if len(text) > filters.max_text_characters:
            return _Outcome(drop="filtered", reason=f"text longer than max_text_characters "
                                                    f"({filters.max_text_characters})", item=meta)
    row = {"id": item.id, "audio": encode_flac(audio), "duration": round(duration, 4), "text": text,
           "prompt": item.prompt, "answers": item.answers, "speaker": item.speaker, "language": item.language}
    return _Outcome(row=row)


def unique_ids(corpus: str, split: str, items: list[RawItem]) -> list[dict]:
    """Give a second (third, ...) item with an id already taken in its split the id `{id}-dup{n}`, in place: ids pair
    predictions and comparisons. Returns what was renamed, each with both sources, and warns on stderr."""
    first: dict[str, str] = {}
    renamed = []
    for item in items:
        if item.id in first:
            n = 2
            while f"{item.id}-dup{n}" in first:
                n += 1
            renamed.append({"id": item.id, "renamed": f"{item.id}-dup{n}", "source": item.source,
                            "first_source": first[item.id]})
            print(f"steermoe: warning: {corpus}/{split}: utterance id {item.id!r} of {item.source} is already the id "
                  f"of {first[item.id]}; renamed {item.id}-dup{n}", file=sys.stderr)
            item.id = f"{item.id}-dup{n}"
        first[item.id] = item.source
    return renamed


def prepare_corpus(corpus: str, splits: dict[str, Iterable[RawItem | Reject]], out_dir: str | Path,
                   filters: Filters | None = None, workers: int | None = None, progress: bool = True) -> dict:
    """Decode, resample, filter and store every split; returns the manifest. Replaces out_dir atomically. Duplicate
    ids within a split are renamed (unique_ids; the manifest lists them)."""
    from tqdm import tqdm

    filters = filters or Filters()
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    workers = workers or min(4, os.cpu_count() or 1)
    manifest = {"format_version": FORMAT_VERSION, "corpus": corpus, "sample_rate": SAMPLE_RATE,
                "filters": asdict(filters), "splits": {}, "filtered": {}, "rejected": {}}
    rejects = []
    pool = get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        for split, items in splits.items():
            rows, filtered, rejected = [], Counter(), Counter()
            formed = []
            for item in items:
                if isinstance(item, Reject):
                    rejected[item.reason] += 1
                    rejects.append({"split": split, **asdict(item)})
                else:
                    formed.append((item, filters))
            renamed = unique_ids(corpus, split, [item for item, _ in formed])
            outcomes = pool.imap(_process, formed, chunksize=4) if pool else map(_process, formed)
            for outcome in tqdm(outcomes, total=len(formed), desc=f"{corpus}/{split}", unit="utt",
                                disable=not progress):
                if outcome.row is not None:
                    rows.append(outcome.row)
                    continue
                (filtered if outcome.drop == "filtered" else rejected)[outcome.reason] += 1
                rejects.append({"split": split, **outcome.item, "reason": outcome.reason})
            if not rows:
                raise DataError(f"{corpus}: split {split!r} has no usable rows ({sum(rejected.values())} rejected, "
                                f"{sum(filtered.values())} filtered: {dict(rejected + filtered)}); check the corpus "
                                f"layout and the filters (filter_dataset, max_audio_length, max_text_characters)")
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), partial / f"{split}.parquet",
                           row_group_size=256, compression="none")  # FLAC is already compressed
            manifest["splits"][split] = {"rows": len(rows), "hours": round(sum(r["duration"] for r in rows) / 3600, 4),
                                         "speakers": len({r["speaker"] for r in rows})}
            manifest["filtered"][split] = dict(sorted(filtered.items()))
            manifest["rejected"][split] = dict(sorted(rejected.items()))
            if renamed:
                manifest.setdefault("renamed", {})[split] = renamed
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if pool:
            pool.terminate()
    (partial / "rejects.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    replace_dir(partial, out_dir)
    return manifest


def only_splits(plans: dict, only: list[str] | None) -> dict:
    """The `only` splits of a builder's per-split plans (all of them when None). A builder plans every split it
    is given sizes for, so a split built alone is the one a full build makes."""
    if only is None:
        return plans
    missing = [split for split in only if split not in plans]
    if missing:
        raise DataError(f"--only {missing[0]}: no such split in the sizes ({', '.join(plans)}); give its size too")
    return {split: plans[split] for split in only}


def split_file(corpus_dir: str | Path, split: str) -> Path:
    """The parquet file of a prepared split, checked to exist and to be in the prepared layout (its schema only)."""
    path = Path(corpus_dir) / f"{split}.parquet"
    if not path.is_file():
        available = sorted(p.stem for p in Path(corpus_dir).glob("*.parquet"))
        raise DataError(f"{path} does not exist; prepared splits in {corpus_dir}: {available or 'none'} "
                        f"(run `steermoe data prepare` first)")
    schema = pq.read_schema(path)
    if not schema.equals(SCHEMA, check_metadata=False):
        raise DataError(f"{path} is not in steermoe's prepared layout (columns {schema.names}); "
                        f"prepare it with `steermoe data prepare`")
    return path


def read_split(corpus_dir: str | Path, split: str) -> pa.Table:
    return pq.read_table(split_file(corpus_dir, split))
