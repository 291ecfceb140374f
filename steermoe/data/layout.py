"""The common prepared-data layout and the one pipeline every preparer feeds.

A prepared corpus is a folder:
    {split}.parquet   one row per utterance (SCHEMA): FLAC bytes (16 kHz mono, 16-bit), duration, text, ...
    manifest.json     counts, hours, speakers per split; the filters applied; what was dropped and why
    rejects.jsonl     every dropped item: split, id, source, reason
Features are never stored: the collator computes them on the fly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from steermoe.data.audio import AudioError, CutAudio, decode, encode_flac
from steermoe.declare.settings import SAMPLE_RATE
from steermoe.errors import DataError
from steermoe.fsutil import replace_dir, write_atomic

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
    """One utterance as a reader found it: audio is a path, encoded bytes or a Lhotse cut's, not yet decoded."""
    id: str
    audio: str | bytes | CutAudio
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


CHUNK = 256  # utterances prepared, stored and resumable together; also the parquet row group
PARTIAL_CHUNKS = "chunks"  # under the partial folder: each split's finished chunks, until the split is written


def prepare_corpus(corpus: str, splits: dict[str, Iterable[RawItem | Reject]], out_dir: str | Path,
                   filters: Filters | None = None, workers: int | None = None, progress: bool = True) -> dict:
    """Decode, resample, filter and store every split; returns the manifest. Replaces out_dir atomically. Duplicate
    ids within a split are renamed (unique_ids; the manifest lists them).

    Work is done in chunks of CHUNK utterances, each stored in the partial folder (.{out}.partial) as it finishes:
    a preparation that was killed resumes from its finished chunks (each checked against its items and the
    filters), so memory holds one chunk, not a split. Each split reports hours of audio prepared per minute."""
    from tqdm import tqdm

    filters = filters or Filters()
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    workers = workers or min(4, os.cpu_count() or 1)
    manifest = {"format_version": FORMAT_VERSION, "corpus": corpus, "sample_rate": SAMPLE_RATE,
                "filters": asdict(filters), "splits": {}, "filtered": {}, "rejected": {}}
    rejects = []
    pool = get_context("spawn").Pool(workers) if workers > 1 else None
    try:
        for split, items in splits.items():
            started = time.time()
            formed, filtered, rejected = [], Counter(), Counter()
            for item in items:
                if isinstance(item, Reject):
                    rejected[item.reason] += 1
                    rejects.append({"split": split, **asdict(item)})
                else:
                    formed.append(item)
            renamed = unique_ids(corpus, split, formed)
            chunks = partial / PARTIAL_CHUNKS / split
            chunks.mkdir(parents=True, exist_ok=True)
            parts, resumed, hours = [], 0, 0.0
            bar = tqdm(total=len(formed), desc=f"{corpus}/{split}", unit="utt", disable=not progress)
            for first in range(0, len(formed), CHUNK):
                done = _prepared_chunk(chunks / f"{first // CHUNK:06d}", formed[first:first + CHUNK], filters, pool)
                resumed += done["resumed"]
                for reject in done["rejects"]:
                    (filtered if reject.pop("drop") == "filtered" else rejected)[reject["reason"]] += 1
                    rejects.append({"split": split, **reject})
                parts.append(done["parquet"])
                hours += done["seconds"] / 3600
                bar.update(len(formed[first:first + CHUNK]))
            bar.close()
            rows, speakers = _write_split(parts, partial / f"{split}.parquet")
            if not rows:
                raise DataError(f"{corpus}: split {split!r} has no usable rows ({sum(rejected.values())} rejected, "
                                f"{sum(filtered.values())} filtered: {dict(rejected + filtered)}); check the corpus "
                                f"layout and the filters (filter_dataset, max_audio_length, max_text_characters)")
            manifest["splits"][split] = {"rows": rows, "hours": round(hours, 4), "speakers": speakers}
            manifest["filtered"][split] = dict(sorted(filtered.items()))
            manifest["rejected"][split] = dict(sorted(rejected.items()))
            if renamed:
                manifest.setdefault("renamed", {})[split] = renamed
            if progress:
                seconds = time.time() - started
                print(f"{corpus}/{split}: {hours:.2f} h of audio in {seconds:.0f} s"
                      + (f" ({hours / seconds * 60:.1f} h/min with {workers} worker(s))" if seconds > 0 else "")
                      + (f"; {resumed} of {len(formed)} utterances were prepared before (resumed)" if resumed else ""))
    except DataError:
        shutil.rmtree(partial, ignore_errors=True)  # bad input: nothing worth resuming
        raise
    finally:
        if pool:
            pool.terminate()
    shutil.rmtree(partial / PARTIAL_CHUNKS)
    (partial / "rejects.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects))
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    replace_dir(partial, out_dir)
    return manifest


def _chunk_key(items: list[RawItem], filters: Filters) -> str:
    """What a stored chunk was made from: its items (an audio file by path, size and time; bytes by their hash; a
    Lhotse cut by its description and its files) and the filters. A chunk whose key differs is prepared again."""
    def file(path: str) -> list:
        stat = os.stat(path) if os.path.isfile(path) else None
        return [path, stat and stat.st_size, stat and stat.st_mtime_ns]

    def audio(item):
        if isinstance(item.audio, str):
            return file(item.audio)
        if isinstance(item.audio, CutAudio):
            return [item.audio.cut, [file(path) for path in item.audio.files()]]
        return hashlib.sha256(item.audio).hexdigest()
    described = [FORMAT_VERSION, asdict(filters)] + [[asdict(item) | {"audio": audio(item)}] for item in items]
    return hashlib.sha256(json.dumps(described, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _prepared_chunk(stem: Path, items: list[RawItem], filters: Filters, pool) -> dict:
    """A chunk's rows (stored at stem.parquet), its rejects and its seconds of audio: read back when stem.json holds
    the same key, else prepared and stored (parquet first, then the json that marks it finished)."""
    key, record = _chunk_key(items, filters), stem.with_suffix(".json")
    if record.is_file():
        done = json.loads(record.read_text())
        if done.get("key") == key and stem.with_suffix(".parquet").is_file():
            return {**done, "parquet": stem.with_suffix(".parquet"), "resumed": len(items)}
    work = [(item, filters) for item in items]
    rows, rejects = [], []
    for outcome in (pool.imap(_process, work, chunksize=4) if pool else map(_process, work)):
        if outcome.row is not None:
            rows.append(outcome.row)
        else:
            rejects.append({**outcome.item, "reason": outcome.reason, "drop": outcome.drop})
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    write_atomic(stem.with_suffix(".parquet"), _parquet_bytes(table))
    done = {"key": key, "rejects": rejects, "seconds": sum(r["duration"] for r in rows)}
    write_atomic(record, json.dumps(done, ensure_ascii=False))
    return {**done, "parquet": stem.with_suffix(".parquet"), "resumed": 0}


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="none")
    return sink.getvalue().to_pybytes()


def _write_split(parts: list[Path], path: Path) -> tuple[int, int]:
    """Join a split's chunks into one parquet file in row groups of CHUNK rows (FLAC is already compressed: no
    compression). Returns its rows and speakers."""
    speakers = set()
    with pq.ParquetWriter(path, SCHEMA, compression="none") as writer:
        pending = SCHEMA.empty_table()
        for part in parts:
            table = pq.read_table(part)
            speakers.update(table.column("speaker").to_pylist())
            pending = pa.concat_tables([pending, table])
            whole = pending.num_rows // CHUNK * CHUNK
            if whole:
                writer.write_table(pending.slice(0, whole), row_group_size=CHUNK)
                pending = pending.slice(whole)
        if pending.num_rows:
            writer.write_table(pending, row_group_size=CHUNK)
    return pq.read_metadata(path).num_rows, len(speakers)


def only_splits(plans: dict, only: list[str] | None) -> dict:
    """The `only` splits of a builder's per-split plans (all of them when None). A builder plans every split it
    is given sizes for, so a split built alone is the one a full build makes."""
    if only is None:
        return plans
    missing = [split for split in only if split not in plans]
    if missing:
        raise DataError(f"--only {missing[0]}: no such split in the sizes ({', '.join(plans)}); give its size too")
    return {split: plans[split] for split in only}


def dropped_at_preparation(files: list[Path]) -> dict | None:
    """What preparation dropped from the splits stored in `files` (filtered by length, or rejected as bad data), from
    the manifest.json beside each: {"utterances": dropped, "of": the split's utterances before, "reasons": {reason:
    count}}; None when nothing was dropped or no file is a prepared split."""
    reasons, kept = Counter(), 0
    for file in files:
        manifest = Path(file).parent / "manifest.json"
        try:
            found = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue  # not a prepared corpus: nothing is known of what was left out
        split = Path(file).stem
        if split in found.get("splits", {}):
            kept += found["splits"][split]["rows"]
            reasons.update(found.get("filtered", {}).get(split, {}))
            reasons.update(found.get("rejected", {}).get(split, {}))
    dropped = sum(reasons.values())
    return {"utterances": dropped, "of": kept + dropped, "reasons": dict(sorted(reasons.items()))} if dropped else None


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
