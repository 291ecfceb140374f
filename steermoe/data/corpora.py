"""Readers for the real corpora, each in its own published layout (steermoe.data.registry names them). A reader only
lists utterances (RawItem) and what it cannot form (Reject); decoding, resampling, filtering and storage are the shared
pipeline's (layout.py).
"""
from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from steermoe.data.layout import DataError, RawItem, Reject

Splits = dict[str, list]


def _require_dir(root: Path, what: str, expected: str) -> Path:
    if not root.is_dir():
        raise DataError(f"{what}: {root} does not exist or is not a folder (expected {expected})")
    return root


def librispeech_raw(root: str | Path) -> Splits:
    """LibriSpeech release: {split}/{speaker}/{chapter}/{spk}-{chap}-{utt}.flac + {spk}-{chap}.trans.txt."""
    root = _require_dir(Path(root), "LibriSpeech", "split folders such as train-clean-100/ and test-clean/")
    splits: Splits = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        transcripts = sorted(split_dir.glob("*/*/*.trans.txt"))
        if not transcripts:
            continue
        items = splits.setdefault(split_dir.name, [])
        for trans in transcripts:
            for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                source = f"{trans}:{number}"
                parts = line.strip().split(" ", 1)
                if not re.fullmatch(r"\d+-\d+-\d+", parts[0]):
                    items.append(Reject(parts[0], source, "malformed transcript line (expected 'SPK-CHAP-UTT TEXT')"))
                    continue
                utt = parts[0]
                audio = trans.parent / f"{utt}.flac"
                if not audio.is_file():
                    items.append(Reject(utt, source, "audio file not found", str(audio)))
                    continue
                items.append(RawItem(utt, str(audio), parts[1] if len(parts) > 1 else "", source,
                                     speaker=utt.split("-")[0], language="en"))
    if not splits:
        raise DataError(f"LibriSpeech: no {{split}}/{{speaker}}/{{chapter}}/*.trans.txt under {root}; point the "
                        f"catalog at the folder that holds train-clean-100/, dev-clean/, test-clean/")
    return splits


def librispeech_hf(root: str | Path) -> Splits:
    """Hugging Face parquet release: columns file, audio{bytes,path}, text, speaker_id, chapter_id, id.
    The split is the file name before its shard suffix (test.clean-00000-of-00001.parquet -> test.clean)."""
    root = _require_dir(Path(root), "LibriSpeech (parquet)", "*.parquet files")
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise DataError(f"LibriSpeech (parquet): no *.parquet files under {root}")
    splits: Splits = {}
    for file in files:
        split = re.sub(r"-\d+-of-\d+$", "", file.stem)
        table = _read_columns(file, ["audio", "text", "speaker_id", "id"])
        items = splits.setdefault(split, [])
        for row_number, row in enumerate(table.to_pylist()):
            source = f"{file}:row {row_number}"
            audio = (row["audio"] or {}).get("bytes")
            if not audio:
                items.append(Reject(str(row["id"]), source, "no audio bytes in the audio column"))
                continue
            items.append(RawItem(str(row["id"]), audio, row["text"] or "", source, speaker=str(row["speaker_id"]),
                                 language="en"))
    return splits


def aishell1(root: str | Path) -> Splits:
    """AISHELL-1: wav/{train,dev,test}/{speaker}/{id}.wav + transcript/aishell_transcript_v0.8.txt (words spaced)."""
    root = _require_dir(Path(root), "AISHELL-1", "wav/ and transcript/")
    transcript = root / "transcript" / "aishell_transcript_v0.8.txt"
    if not transcript.is_file():
        raise DataError(f"AISHELL-1: {transcript} not found; the corpus folder must hold "
                        f"transcript/aishell_transcript_v0.8.txt and wav/{{split}}/{{speaker}}/*.wav")
    wavs = {wav.stem: wav for wav in sorted((root / "wav").glob("*/*/*.wav"))}  # {id: wav/{split}/{spk}/{id}.wav}
    if not wavs:
        raise DataError(f"AISHELL-1: no wav/{{split}}/{{speaker}}/*.wav under {root}")
    splits: Splits = {split: [] for split in sorted({w.parent.parent.name for w in wavs.values()})}
    texts, malformed = {}, set()
    for number, line in enumerate(transcript.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            texts[parts[0]] = "".join(parts[1].split())  # words are space-separated; the target is the characters
            continue
        # a line with an id and no text: listed once, under the split of its audio (or the first split)
        malformed.add(parts[0])
        split = wavs[parts[0]].parent.parent.name if parts[0] in wavs else next(iter(splits))
        splits[split].append(Reject(parts[0], f"{transcript}:{number}", "malformed transcript line (no text)"))
    for utt, wav in wavs.items():
        if utt in texts:
            splits[wav.parent.parent.name].append(RawItem(utt, str(wav), texts[utt], str(wav),
                                                          speaker=wav.parent.name, language="zh"))
        elif utt not in malformed:
            splits[wav.parent.parent.name].append(Reject(utt, str(wav), "no transcript line for this file"))
    return splits


def aishell2(root: str | Path) -> Splits:
    """AISHELL-2: one folder per split (e.g. data/ -> train, dev/, test/), each with wav.scp and trans.txt,
    tab-separated (`ID<TAB>path` and `ID<TAB>text`); wav paths are relative to that folder."""
    root = _require_dir(Path(root), "AISHELL-2", "folders with wav.scp + trans.txt")
    scps = sorted(root.rglob("wav.scp"))
    if not scps:
        raise DataError(f"AISHELL-2: no wav.scp under {root}; each split folder needs wav.scp and trans.txt")
    splits: Splits = {}
    for scp in scps:
        folder = scp.parent
        split = "train" if folder.name == "data" else folder.name
        trans_file = folder / "trans.txt"
        if not trans_file.is_file():
            raise DataError(f"AISHELL-2: {trans_file} not found next to {scp}")
        items = splits.setdefault(split, [])
        texts = {}
        for number, line in enumerate(trans_file.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split("\t", 1)
            if len(parts) != 2:
                items.append(Reject(parts[0].strip(), f"{trans_file}:{number}",
                                    "malformed trans.txt line (expected ID<TAB>text)"))
                continue
            texts[parts[0].strip()] = "".join(parts[1].split())
        for number, line in enumerate(scp.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split("\t", 1)
            if len(parts) != 2:
                items.append(Reject(parts[0].strip(), f"{scp}:{number}",
                                    "malformed wav.scp line (expected ID<TAB>path)"))
                continue
            utt, rel = parts[0].strip(), parts[1].strip()
            if utt not in texts:
                items.append(Reject(utt, f"{scp}:{number}", "no trans.txt line for this id"))
                continue
            speaker = Path(rel).parent.name
            items.append(RawItem(utt, str(folder / rel), texts[utt], f"{scp}:{number}", speaker=speaker,
                                 language="zh"))
    return splits


CLOTHO_SPLITS = {"train": "train", "val": "dev", "test": "test"}


def clotho_aqa(root: str | Path) -> Splits:
    """Clotho-AQA: clotho_aqa_{train,val,test}.csv (file_name, QuestionText, answer, confidence) + audio folder.
    Each question has answers from three annotators: rows are grouped per (file, question); the target is the
    majority answer and all answers are kept as references."""
    root = _require_dir(Path(root), "Clotho-AQA", "clotho_aqa_*.csv and the audio folder")
    audio_index = {p.name: p for p in root.rglob("*.wav")}
    splits: Splits = {}
    for csv_split, split in CLOTHO_SPLITS.items():
        csv_file = root / f"clotho_aqa_{csv_split}.csv"
        if not csv_file.is_file():
            continue
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        items = splits.setdefault(split, [])
        with open(csv_file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            required = {"file_name", "QuestionText", "answer"}
            if not required <= set(reader.fieldnames or []):
                raise DataError(f"Clotho-AQA: {csv_file} has columns {reader.fieldnames}; "
                                f"expected at least {sorted(required)}")
            for number, row in enumerate(reader, 2):
                if not row["file_name"] or not row["QuestionText"]:
                    items.append(Reject(row.get("file_name") or "", f"{csv_file}:{number}",
                                        "row without file_name or QuestionText"))
                    continue
                groups[(row["file_name"], row["QuestionText"].strip())].append((row["answer"] or "").strip())
        for index, ((file_name, question), answers) in enumerate(groups.items()):
            utt = f"{Path(file_name).stem}-q{index}"
            source = f"{csv_file}:{file_name}"
            if file_name not in audio_index:
                items.append(Reject(utt, source, "audio file not found", file_name))
                continue
            majority = Counter(a for a in answers if a).most_common(1)
            items.append(RawItem(utt, str(audio_index[file_name]), majority[0][0] if majority else "", source,
                                 speaker="clotho", language="en", prompt=question, answers=answers))
    if not splits:
        raise DataError(f"Clotho-AQA: no clotho_aqa_{{train,val,test}}.csv in {root}")
    return splits


LHOTSE_MANIFESTS = ("*.jsonl.gz", "*.jsonl")
LANGUAGES = {"english": "en", "en": "en", "chinese": "zh", "mandarin": "zh", "zh": "zh", "cmn": "zh"}


def lhotse_split(manifest: Path) -> str:
    """The split a CutSet manifest holds, by its name: librispeech_cuts_train-clean-100.jsonl.gz (icefall) ->
    train-clean-100, cuts_dev.jsonl.gz -> dev, train.jsonl -> train."""
    stem = manifest.name.removesuffix(".gz").removesuffix(".jsonl")
    return re.sub(r"^(.*[_-])?cuts[_-]", "", stem) or stem


def lhotse_cuts(root: str | Path) -> Splits:
    """Lhotse CutSets (jsonl or jsonl.gz manifests, one per split: lhotse_split names it), read by Lhotse: each cut
    is an utterance (its id; its supervisions' texts joined in time order; a segment and channels of its recording,
    read by Lhotse at preparation). A relative audio path is looked for under the folder of the manifests, then
    under the working directory (where Lhotse recipes write them)."""
    from lhotse import load_manifest_lazy

    root = Path(root)
    if not root.exists():
        raise DataError(f"Lhotse: {root} does not exist (expected a CutSet manifest, or a folder of them: "
                        f"cuts_{{split}}.jsonl.gz)")
    manifests = [root] if root.is_file() else sorted({m for pattern in LHOTSE_MANIFESTS for m in root.glob(pattern)})
    if not manifests:
        raise DataError(f"Lhotse: no CutSet manifests (*.jsonl.gz, *.jsonl) in {root}")
    splits: Splits = {}
    for manifest in manifests:
        items = splits.setdefault(lhotse_split(manifest), [])
        try:
            cuts = list(enumerate(load_manifest_lazy(manifest), 1))
        except Exception as err:  # Lhotse raises what its JSON reader and deserialisers raise
            raise DataError(f"Lhotse: {manifest} is not a CutSet manifest ({type(err).__name__}: {err})") from None
        for number, cut in cuts:
            items.append(_lhotse_item(cut, f"{manifest}:{number}", manifest.parent))
    return splits


def _lhotse_item(cut, source: str, folder: Path) -> RawItem | Reject:
    from steermoe.data.audio import CutAudio

    recording = getattr(cut, "recording", None)
    if recording is None:
        return Reject(cut.id, source, "no recording in the cut (features only)")
    supervisions = sorted(cut.supervisions, key=lambda s: s.start)
    if not supervisions:
        return Reject(cut.id, source, "no supervision in the cut")
    description = cut.to_dict()
    for audio in description["recording"]["sources"]:
        if audio["type"] == "url":
            return Reject(cut.id, source, "audio source is a URL (nothing is downloaded)", audio["source"])
        if audio["type"] == "file" and not Path(audio["source"]).is_absolute():
            found = [p for p in (folder / audio["source"], Path(audio["source"])) if p.is_file()]
            if not found:
                return Reject(cut.id, source, "audio file not found",
                              f"{audio['source']} (under {folder} or the working directory)")
            audio["source"] = str(found[0].resolve())
        elif audio["type"] == "file" and not Path(audio["source"]).is_file():
            return Reject(cut.id, source, "audio file not found", audio["source"])
    first = supervisions[0]
    language = LANGUAGES.get((first.language or "en").lower(), (first.language or "en").lower())
    text = " ".join((s.text or "").strip() for s in supervisions).strip()
    return RawItem(cut.id, CutAudio(description), text, source, speaker=first.speaker or "", language=language)


def generic_parquet(paths: list[str | Path], audio_column: str = "audio", text_column: str = "text",
                    split: str | None = None) -> Splits:
    """The original code's generic path: parquet files with `audio_column` (bytes, or a struct with bytes) and
    `text_column`, and their `id` column where they have one. Each directory (or file) given is one split, named by
    `split` or by the folder/file name."""
    splits: Splits = {}
    for path in map(Path, paths):
        files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise DataError(f"parquet_dirs: {path} has no *.parquet files")
        items = splits.setdefault(split or (path.name if path.is_dir() else path.stem), [])
        for file in files:
            table = _read_columns(file, [audio_column, text_column], hint="audio_column / text_column",
                                  optional=["id"])  # the user's own ids, kept; else {file}-{row}
            has_ids = "id" in table.column_names
            for row_number, row in enumerate(table.to_pylist()):
                audio = row[audio_column]
                if isinstance(audio, dict):
                    audio = audio.get("bytes")
                source = f"{file}:row {row_number}"
                utt = str(row["id"]) if has_ids and row["id"] is not None else f"{file.stem}-{row_number}"
                if not audio:
                    items.append(Reject(utt, source, "no audio bytes"))
                    continue
                items.append(RawItem(utt, audio, row[text_column] or "", source))
    return splits


def _read_columns(file: Path, columns: list[str], hint: str = "the published layout", optional=()):
    """The file's `columns`, and those of `optional` it has."""
    try:
        names = pq.read_schema(file).names
    except Exception as err:
        raise DataError(f"{file} is not a readable parquet file ({err})") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{file} lacks column(s) {missing}; it has {names} (check {hint})")
    return pq.read_table(file, columns=columns + [c for c in optional if c in names and c not in columns])

