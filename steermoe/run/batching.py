"""From a prepared split to model batches: lazy FLAC decoding, on-the-fly features, length-grouped batches."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch

from steermoe.data.audio import AudioError, decode
from steermoe.data.layout import DataError, read_split
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
    """Utterances held as encoded audio in memory (FLAC/WAV bytes), decoded per item.

    columns: id, audio (bytes), duration (s), text; optional prompt (str), answers (list of str) and language (a
    code such as 'en': what a reference row's multilingual Whisper is told).
    """

    def __init__(self, columns: dict[str, list], source: str = ""):
        self.columns = columns
        self.durations = columns["duration"]
        self.source = source  # where the rows come from (a config key and its files), for error messages

    @classmethod
    def prepared(cls, corpus_dir, split: str) -> "AudioRows":
        """A split of a corpus prepared by `steermoe data prepare|synth`."""
        table = read_split(corpus_dir, split)
        return cls({name: table.column(name).to_pylist() for name in table.column_names})

    @classmethod
    def from_parquet(cls, entries: list[str], audio_column: str = "audio", text_column: str = "text",
                     key: str = "parquet_dirs") -> "AudioRows":
        """Any parquet (the original code's `parquet_dirs`): each entry a .parquet file or a folder of them. The audio
        column holds encoded bytes or Hugging Face's {bytes, path} struct; durations are read from the audio header when
        the file has no `duration` column."""
        import io

        import pyarrow.parquet as pq
        import soundfile as sf

        columns = {"id": [], "audio": [], "duration": [], "text": [], "prompt": [], "answers": [], "language": []}
        files = parquet_files(entries, audio_column, text_column, key)
        starts = []  # (first utterance, file): where each file's rows begin, for messages
        for file in files:
            table = pq.read_table(file)
            starts.append((len(columns["id"]), file))
            audio = table.column(audio_column).to_pylist()
            audio = [a["bytes"] if isinstance(a, dict) else a for a in audio]
            n = len(audio)
            get = lambda name, fill: table.column(name).to_pylist() if name in table.column_names else [fill] * n
            columns["audio"] += audio
            columns["text"] += table.column(text_column).to_pylist()
            columns["id"] += [str(i) for i in get("id", None)] if "id" in table.column_names else \
                [f"{file.stem}:{i}" for i in range(n)]
            columns["prompt"] += get("prompt", None)
            columns["answers"] += get("answers", None)
            columns["language"] += get("language", None)
            if "duration" in table.column_names:
                columns["duration"] += [float(d) for d in table.column("duration").to_pylist()]
            else:
                for i, a in enumerate(audio):
                    try:
                        info = sf.info(io.BytesIO(a))
                    except Exception as err:  # soundfile raises several types for bad data
                        raise DataError(f"{file} row {i}: undecodable audio in {audio_column!r} ({err}); "
                                        f"prepare the data with `steermoe data prepare`") from None
                    columns["duration"].append(info.frames / info.samplerate)
        if not columns["id"]:
            raise DataError(f"{key}: {', '.join(map(str, files))} hold(s) no rows (an empty split); prepare the data "
                            f"again or point the key at a split with rows")
        def origin(n: int) -> str:
            start, file = next((start, file) for start, file in reversed(starts) if start <= n)
            return f"{file} row {n - start}"

        first: dict[str, int] = {}
        for n, utt in enumerate(columns["id"]):
            if utt in first:
                raise DataError(f"{key}: utterance id {utt!r} is both {origin(first[utt])} and {origin(n)}; "
                                f"predictions and comparisons pair utterances by id: make the ids unique, or "
                                f"prepare the data with `steermoe data prepare`, which renames duplicates")
            first[utt] = n
        return cls(columns, f"{key} ({', '.join(map(str, files))})")

    def subset(self, indices: list[int]) -> "AudioRows":
        return AudioRows({name: [values[i] for i in indices] for name, values in self.columns.items()}, self.source)

    def __len__(self) -> int:
        return len(self.durations)

    def __getitem__(self, index: int) -> dict:
        row = {name: values[index] for name, values in self.columns.items() if name != "audio"}
        try:
            return {**row, "audio": decode(self.columns["audio"][index])}
        except AudioError as err:  # prepared data never has such rows: `steermoe data prepare` lists and skips them
            raise DataError(f"{self.source}: utterance {row['id']!r}: {err}; prepare the data with `steermoe data "
                            f"prepare`, which skips such rows and lists them in rejects.jsonl") from None


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
