"""From a prepared split to model batches: lazy FLAC decoding, on-the-fly features, length-grouped batches."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from steermoe.data.audio import AudioError, decode
from steermoe.data.layout import DataError, split_file
from steermoe.declare.settings import default_loader_workers
from steermoe.model.features import AudioFeatures


def parquet_files(entries: list[str], audio_column: str, text_column: str, key: str) -> list[Path]:
    """The parquet files of `parquet_dirs`-like entries (each a .parquet file or a folder of them), checked to exist
    and to have the audio and text columns. Reads the files' schemas only: cheap enough to run before any weights
    load."""
    import pyarrow.parquet as pq

    files = []
    for entry in entries:
        path = Path(entry)
        found = sorted(path.glob("*.parquet")) if path.is_dir() else [path] if path.is_file() else []
        if not found:
            raise DataError(f"{key}: {entry} is neither a .parquet file nor a folder with .parquet files; "
                            f"prepare the data with `steermoe data prepare|synth` and point the key at it")
        files += found
    for file in files:
        names = pq.read_schema(file).names
        for wanted, option in ((audio_column, "audio_column"), (text_column, "text_column")):
            if wanted not in names:
                raise DataError(f"{file} has no column {wanted!r} ({option}); its columns: {', '.join(names)}")
    return files


class AudioRows(torch.utils.data.Dataset):
    """Utterances read lazily from parquet files: the index (ids, durations, texts, ...) is held in memory, the
    encoded audio (FLAC/WAV bytes) is read from its file's row group when an item is asked for, and decoded.

    Audio is never held for the whole split, so N processes on one node share the page cache of the files instead
    of holding N copies. Each process (each loader worker) keeps the row groups it read last (ROW_GROUP_CACHE).

    columns: id, duration (s), text; optional prompt (str), answers (list of str) and language (a code such as
    'en': what a reference row's multilingual Whisper is told). where: for each row, (file number, row group,
    row within the group) in `files`.
    """

    ROW_GROUP_CACHE = 4  # row groups of audio kept per process: a few, so memory stays bounded by the group size

    def __init__(self, columns: dict[str, list], files: list[Path], where: np.ndarray, audio_column: str = "audio",
                 source: str = ""):
        self.columns, self.files, self.where, self.audio_column = columns, files, where, audio_column
        self.durations = columns["duration"]
        self.source = source  # where the rows come from (a config key and its files), for error messages
        self._groups: dict[tuple[int, int], object] = {}  # (file, row group) -> its audio column, newest last

    @classmethod
    def prepared(cls, corpus_dir, split: str) -> "AudioRows":
        """A split of a corpus prepared by `steermoe data prepare|synth`."""
        return cls.from_parquet([str(split_file(corpus_dir, split))], key=f"{corpus_dir} {split}")

    @classmethod
    def from_parquet(cls, entries: list[str], audio_column: str = "audio", text_column: str = "text",
                     key: str = "parquet_dirs") -> "AudioRows":
        """Any parquet (the original code's `parquet_dirs`): each entry a .parquet file or a folder of them. The audio
        column holds encoded bytes or Hugging Face's {bytes, path} struct; durations are read from the audio headers
        (one row group at a time) when the file has no `duration` column. Reads every column but the audio."""
        import io

        import pyarrow.parquet as pq
        import soundfile as sf

        columns = {"id": [], "duration": [], "text": [], "prompt": [], "answers": [], "language": []}
        files = parquet_files(entries, audio_column, text_column, key)
        where = []
        for number, file in enumerate(files):
            parquet = pq.ParquetFile(file, memory_map=True)
            names = parquet.schema_arrow.names
            table = parquet.read(columns=[n for n in names if n != audio_column])
            n = table.num_rows
            get = lambda name: table.column(name).to_pylist() if name in names else [None] * n
            columns["text"] += table.column(text_column).to_pylist()
            columns["id"] += [str(i) for i in get("id")] if "id" in names else [f"{file.stem}:{i}" for i in range(n)]
            columns["prompt"] += get("prompt")
            columns["answers"] += get("answers")
            columns["language"] += get("language")
            for group in range(parquet.num_row_groups):
                where += [(number, group, i) for i in range(parquet.metadata.row_group(group).num_rows)]
            if "duration" in names:
                columns["duration"] += [float(d) for d in table.column("duration").to_pylist()]
                continue
            row = 0
            for group in range(parquet.num_row_groups):
                group_audio = parquet.read_row_group(group, columns=[audio_column]).column(0)
                for audio in encoded_column(group_audio).to_pylist():
                    try:
                        info = sf.info(io.BytesIO(audio))
                    except Exception as err:  # soundfile raises several types for bad data
                        raise DataError(f"{file} row {row}: undecodable audio in {audio_column!r} ({err}); "
                                        f"prepare the data with `steermoe data prepare`") from None
                    columns["duration"].append(info.frames / info.samplerate)
                    row += 1
        if not columns["id"]:
            raise DataError(f"{key}: {', '.join(map(str, files))} hold(s) no rows (an empty split); prepare the data "
                            f"again or point the key at a split with rows")
        rows = cls(columns, files, np.array(where, dtype=np.int64).reshape(-1, 3), audio_column,
                   f"{key} ({', '.join(map(str, files))})")
        first: dict[str, int] = {}
        for n, utt in enumerate(columns["id"]):
            if utt in first:
                raise DataError(f"{key}: utterance id {utt!r} is both {rows.origin(first[utt])} and {rows.origin(n)}; "
                                f"predictions and comparisons pair utterances by id: make the ids unique, or "
                                f"prepare the data with `steermoe data prepare`, which renames duplicates")
            first[utt] = n
        return rows

    def origin(self, index: int) -> str:
        """'<file> row <n>' of a row, counted from the file's first row."""
        import pyarrow.parquet as pq

        number, group, offset = (int(v) for v in self.where[index])
        metadata = pq.ParquetFile(self.files[number]).metadata
        return f"{self.files[number]} row {sum(metadata.row_group(g).num_rows for g in range(group)) + offset}"

    def subset(self, indices: list[int]) -> "AudioRows":
        return AudioRows({name: [values[i] for i in indices] for name, values in self.columns.items()}, self.files,
                         self.where[indices], self.audio_column, self.source)

    def __len__(self) -> int:
        return len(self.durations)

    def __getstate__(self) -> dict:  # a loader worker starts with an empty cache, not the parent's open files
        return {**self.__dict__, "_groups": {}}

    def audio_bytes(self, index: int) -> bytes:
        """The encoded audio of a row, read with its row group (kept in this process's cache)."""
        import pyarrow.parquet as pq

        number, group, offset = (int(v) for v in self.where[index])
        audio = self._groups.pop((number, group), None)
        if audio is None:
            try:
                parquet = pq.ParquetFile(self.files[number], memory_map=True)
                audio = encoded_column(parquet.read_row_group(group, columns=[self.audio_column]).column(0))
            except OSError as err:  # the audio is read as it is needed: the file must stay while the run reads it
                raise DataError(f"{self.source}: cannot read {self.files[number]} ({err}); it was moved, removed or "
                                f"changed after the run read its index: put it back and run the same command "
                                f"again") from None
            while len(self._groups) >= self.ROW_GROUP_CACHE:
                self._groups.pop(next(iter(self._groups)))
        self._groups[number, group] = audio
        return audio[offset].as_py()

    def __getitem__(self, index: int) -> dict:
        row = {name: values[index] for name, values in self.columns.items()}
        try:
            return {**row, "audio": decode(self.audio_bytes(index))}
        except AudioError as err:  # prepared data never has such rows: `steermoe data prepare` lists and skips them
            raise DataError(f"{self.source}: utterance {row['id']!r}: {err} ({self.origin(index)}); prepare the "
                            f"data with `steermoe data prepare`, which skips such rows and lists them in "
                            f"rejects.jsonl") from None


def encoded_column(column):
    """A parquet audio column as an array of encoded bytes: the bytes themselves, or the `bytes` field of Hugging
    Face's {bytes, path} struct."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return column.field("bytes") if pa.types.is_struct(column.type) else column


class AudioWindows(torch.utils.data.Dataset):
    """The rows `chosen` of an AudioRows, each longer than `longest` seconds cut into equal consecutive windows of at
    most that length (a row that fits is one window). Evaluation decodes the windows and joins their hypotheses, so
    that no utterance is cut short by the encoder's window."""

    def __init__(self, rows: AudioRows, chosen: list[int], longest: float):
        self.rows, self.longest = rows, longest
        self.windows = [(i, k, n) for i in chosen for n in [max(1, math.ceil(rows.durations[i] / longest - 1e-9))]
                        for k in range(n)]  # (row, window number, windows of that row)
        self.durations = [rows.durations[i] / n for i, _, n in self.windows]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict:
        i, k, n = self.windows[index]
        row = self.rows[i]
        if n == 1:
            return row
        size = -(-len(row["audio"]) // n)
        return {**row, "audio": row["audio"][k * size:(k + 1) * size]}

    def join(self, hypotheses: dict[int, str]) -> dict[int, str]:
        """{window: hypothesis} -> {row: its windows' hypotheses joined by spaces, in order}."""
        parts: dict[int, list[str]] = {}
        for index, (i, _, _) in enumerate(self.windows):
            parts.setdefault(i, []).append(hypotheses[index].strip())
        return {i: " ".join(p for p in texts if p) for i, texts in parts.items()}

    def record(self) -> dict | None:
        """What metrics.json says of the windows: None when every row fitted."""
        counts = {i: n for i, _, n in self.windows if n > 1}
        if not counts:
            return None
        return {"utterances": len(counts), "window_seconds": round(self.longest, 2),
                "most_windows": max(counts.values()), "ids": [self.rows.columns["id"][i] for i in sorted(counts)]}


class Collator:
    """Rows -> {features (B, ...), feature_lengths (B,), targets, prompts, ids}. Text is tokenised by the model
    and padded to the batch's longest sequence, never to a fixed length."""

    def __init__(self, features: AudioFeatures, textual_prompt: str):
        self.features, self.textual_prompt = features, textual_prompt

    def __call__(self, rows: list[dict]) -> dict:
        feats, lengths = self.features([np.asarray(r["audio"], dtype=np.float32) for r in rows])
        return {"features": feats, "feature_lengths": lengths, "targets": [r["text"] for r in rows],
                "prompts": [self.textual_prompt + (r.get("prompt") or "") for r in rows],
                "ids": [r["id"] for r in rows]}


def loader_workers(stated: int | None) -> int:
    """Loader processes: dataloader_num_workers as stated, else the default for this process's threads and device."""
    return stated if stated is not None else default_loader_workers(torch.get_num_threads(), torch.cuda.is_available())


def loader_options(workers: int) -> dict:
    """DataLoader arguments: `workers` processes, each with four batches ready; on a GPU, batches in pinned memory
    (the copy to the GPU is then asynchronous)."""
    return {"num_workers": workers, "pin_memory": torch.cuda.is_available(),
            **({"prefetch_factor": 4} if workers else {})}


class LengthGroupedBatches(torch.utils.data.Sampler):
    """Batches of similar duration (less padding), in a seeded random order that changes per epoch.

    The split is shuffled, cut into windows of `window` batches, each window sorted by duration and cut into
    batches; then the batch order is shuffled. Every index appears exactly once per epoch.
    """

    def __init__(self, durations: list[float], batch_size: int, seed: int = 0, window: int = 50):
        self.durations, self.batch_size, self.seed, self.window = durations, batch_size, seed, window
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.durations)))
        rng.shuffle(order)
        span = self.batch_size * self.window
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start:start + span], key=self.durations.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return -(-len(self.durations) // self.batch_size)
