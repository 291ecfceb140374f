"""Each preparer on a fixture written in the corpus's exact published layout, with the usual damage: a corrupted
file, a stereo 44.1 kHz file, an empty transcript, an over-long clip, malformed lines, missing audio."""
import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from steermoe.data import corpora
from steermoe.data.audio import decode
from steermoe.data.layout import DataError, Filters, prepare_corpus, read_split

FILTERS = Filters(max_audio_length=2.0, max_text_characters=100)


def tone(seconds: float, rate: int = 16000, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return mono if channels == 1 else np.stack([mono, 0.5 * mono], axis=1)


def write_audio(path, seconds, rate=16000, channels=1, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, rate, channels), rate, format=fmt)


def audio_bytes(seconds, rate=16000, channels=1, fmt="FLAC"):
    buffer = io.BytesIO()
    sf.write(buffer, tone(seconds, rate, channels), rate, format=fmt)
    return buffer.getvalue()


def prepared(tmp_path, name, splits):
    out = tmp_path / name
    manifest = prepare_corpus(name, splits, out, FILTERS, workers=1, progress=False)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    return out, manifest, rejects


def check_damage(out, split, manifest, rejects, good_ids, stereo_id):
    table = read_split(out, split)
    assert sorted(table.column("id").to_pylist()) == sorted(good_ids)
    rows = {r["id"]: r for r in table.to_pylist()}
    stereo = decode(rows[stereo_id]["audio"])
    assert abs(len(stereo) / 16000 - 1.2) < 0.01 and abs(rows[stereo_id]["duration"] - 1.2) < 0.01
    assert sf.info(io.BytesIO(rows[stereo_id]["audio"])).samplerate == 16000
    assert sf.info(io.BytesIO(rows[stereo_id]["audio"])).channels == 1
    assert manifest["filtered"][split] == {"audio longer than max_audio_length (2 s)": 1}
    assert manifest["rejected"][split]["undecodable audio"] == 1
    assert manifest["rejected"][split]["empty transcript"] == 1
    assert manifest["splits"][split]["rows"] == len(good_ids)
    reasons = {r["reason"] for r in rejects}
    assert {"undecodable audio", "empty transcript", "audio longer than max_audio_length (2 s)"} <= reasons
    assert all(r["source"] for r in rejects)


def test_librispeech_raw(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "19" / "198"
    write_audio(chapter / "19-198-0000.flac", 1.0)
    write_audio(chapter / "19-198-0001.flac", 1.2, rate=44100, channels=2)
    (chapter / "19-198-0002.flac").write_bytes(b"fLaC" + b"\x00garbage" * 50)
    write_audio(chapter / "19-198-0003.flac", 2.5)
    write_audio(chapter / "19-198-0004.flac", 1.0)
    (chapter / "19-198.trans.txt").write_text(
        "19-198-0000 NORTHANGER ABBEY\n19-198-0001 THIS LITTLE WORK WAS FINISHED\n19-198-0002 CORRUPTED\n"
        "19-198-0003 A VERY LONG CLIP\n19-198-0004\nBADLINE WITHOUT AN ID\n19-198-0009 NO AUDIO FOR THIS\n")
    out, manifest, rejects = prepared(tmp_path, "libri", corpora.librispeech_raw(tmp_path / "LibriSpeech"))
    check_damage(out, "test-clean", manifest, rejects, ["19-198-0000", "19-198-0001"], "19-198-0001")
    assert manifest["rejected"]["test-clean"]["audio file not found"] == 1
    assert manifest["rejected"]["test-clean"]["malformed transcript line (expected 'SPK-CHAP-UTT TEXT')"] == 1
    row = read_split(out, "test-clean").to_pylist()[0]
    assert (row["text"], row["speaker"], row["language"]) == ("NORTHANGER ABBEY", "19", "en")


def test_librispeech_parquet(tmp_path):
    rows = [
        {"file": "a.flac", "audio": {"bytes": audio_bytes(1.0), "path": "a.flac"}, "text": "HELLO", "speaker_id": 1,
         "chapter_id": 2, "id": "1-2-0"},
        {"file": "b.flac", "audio": {"bytes": audio_bytes(1.2, 44100, 2), "path": "b.flac"}, "text": "STEREO",
         "speaker_id": 1, "chapter_id": 2, "id": "1-2-1"},
        {"file": "c.flac", "audio": {"bytes": b"not audio at all", "path": "c.flac"}, "text": "BROKEN",
         "speaker_id": 1, "chapter_id": 2, "id": "1-2-2"},
        {"file": "d.flac", "audio": {"bytes": audio_bytes(2.5), "path": "d.flac"}, "text": "LONG", "speaker_id": 3,
         "chapter_id": 2, "id": "3-2-3"},
        {"file": "e.flac", "audio": {"bytes": audio_bytes(1.0), "path": "e.flac"}, "text": "", "speaker_id": 3,
         "chapter_id": 2, "id": "3-2-4"},
    ]
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hf" / "test.clean-00000-of-00001.parquet")
    out, manifest, rejects = prepared(tmp_path, "libri-hf", corpora.librispeech_hf(tmp_path / "hf"))
    check_damage(out, "test.clean", manifest, rejects, ["1-2-0", "1-2-1"], "1-2-1")


def test_aishell1(tmp_path):
    root = tmp_path / "aishell"
    write_audio(root / "wav" / "test" / "S0764" / "BAC009S0764W0121.wav", 1.0)
    write_audio(root / "wav" / "test" / "S0764" / "BAC009S0764W0122.wav", 1.2, rate=44100, channels=2)
    (root / "wav" / "test" / "S0764" / "BAC009S0764W0123.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    write_audio(root / "wav" / "test" / "S0764" / "BAC009S0764W0124.wav", 2.5)
    write_audio(root / "wav" / "test" / "S0764" / "BAC009S0764W0125.wav", 1.0)
    write_audio(root / "wav" / "test" / "S0764" / "BAC009S0764W0126.wav", 1.0)  # no transcript line
    (root / "transcript").mkdir()
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0764W0121 甚至 出现 交易 几乎 停滞 的 情况\nBAC009S0764W0122 一二线 城市 虽然 也 处于 调整 中\n"
        "BAC009S0764W0123 损坏\nBAC009S0764W0124 很长 的 音频\nBAC009S0764W0125 \nBAC009S0764W0127\n",
        encoding="utf-8")
    out, manifest, rejects = prepared(tmp_path, "aishell1", corpora.aishell1(root))
    # W0125's and W0127's lines have no text after the id: malformed lines, each listed once
    table = read_split(out, "test")
    assert sorted(table.column("id").to_pylist()) == ["BAC009S0764W0121", "BAC009S0764W0122"]
    assert table.to_pylist()[0]["text"] == "甚至出现交易几乎停滞的情况" and table.to_pylist()[0]["language"] == "zh"
    assert manifest["rejected"]["test"]["no transcript line for this file"] == 1  # W0126
    assert manifest["rejected"]["test"]["malformed transcript line (no text)"] == 2  # W0125 (has audio), W0127
    assert manifest["filtered"]["test"] == {"audio longer than max_audio_length (2 s)": 1}
    assert manifest["rejected"]["test"]["undecodable audio"] == 1
    stereo = [r for r in table.to_pylist() if r["id"].endswith("22")][0]
    assert abs(stereo["duration"] - 1.2) < 0.01


def test_aishell2(tmp_path):
    data = tmp_path / "AISHELL-2" / "iOS" / "data"
    write_audio(data / "wav" / "C0001" / "IC0001W0001.wav", 1.0)
    write_audio(data / "wav" / "C0001" / "IC0001W0002.wav", 1.2, rate=44100, channels=2)
    (data / "wav" / "C0001" / "IC0001W0003.wav").write_bytes(b"")
    write_audio(data / "wav" / "C0002" / "IC0002W0001.wav", 2.5)
    write_audio(data / "wav" / "C0002" / "IC0002W0002.wav", 1.0)
    (data / "wav.scp").write_text("IC0001W0001\twav/C0001/IC0001W0001.wav\nIC0001W0002\twav/C0001/IC0001W0002.wav\n"
                                  "IC0001W0003\twav/C0001/IC0001W0003.wav\nIC0002W0001\twav/C0002/IC0002W0001.wav\n"
                                  "IC0002W0002\twav/C0002/IC0002W0002.wav\nIC0002W0009 wav/C0002/missing.wav\n")
    (data / "trans.txt").write_text("IC0001W0001\t厨房用具\nIC0001W0002\t电蒸锅\nIC0001W0003\t坏的\n"
                                    "IC0002W0001\t很长\nIC0002W0002\t\nbroken line without tab\n", encoding="utf-8")
    out, manifest, rejects = prepared(tmp_path, "aishell2", corpora.aishell2(tmp_path / "AISHELL-2"))
    check_damage(out, "train", manifest, rejects, ["IC0001W0001", "IC0001W0002"], "IC0001W0002")
    assert manifest["rejected"]["train"]["malformed wav.scp line (expected ID<TAB>path)"] == 1
    assert manifest["rejected"]["train"]["malformed trans.txt line (expected ID<TAB>text)"] == 1
    assert read_split(out, "train").to_pylist()[0]["speaker"] == "C0001"


def write_lhotse_corpus(tmp_path):
    """A CutSet as a Lhotse recipe leaves it: recordings with relative paths, cuts that are segments of them, one of
    them stereo at 44.1 kHz, and the damage (a corrupted file, an empty and a missing supervision, a missing file, a
    URL, an over-long cut)."""
    from lhotse import CutSet, Recording, SupervisionSegment

    root = tmp_path / "lhotse"
    write_audio(root / "audio" / "book.flac", 3.0)
    write_audio(root / "audio" / "stereo.wav", 1.2, rate=44100, channels=2)
    write_audio(root / "audio" / "long.flac", 2.5)
    write_audio(root / "audio" / "broken.flac", 1.0)
    write_audio(root / "audio" / "gone.flac", 1.0)

    def cut(name, text, offset=0.0, duration=None):
        recording = Recording.from_file(root / "audio" / name, recording_id=Path(name).stem)
        whole = recording.to_cut()
        part = whole.truncate(offset=offset, duration=duration) if duration else whole
        part = part.with_id(f"{Path(name).stem}-{offset:g}")
        part.supervisions = [] if text is None else [SupervisionSegment(
            part.id, recording.id, 0.0, part.duration, channel=0, text=text, speaker="spk1", language="English")]
        return part

    import lhotse

    cuts = [cut("book.flac", "FIRST HALF", 0.0, 1.5), cut("book.flac", "SECOND HALF", 1.5, 1.5),
            cut("stereo.wav", "TWO CHANNELS"), cut("long.flac", "TOO LONG"), cut("broken.flac", "BROKEN"),
            cut("book.flac", "", 0.5, 1.0), cut("book.flac", None, 1.0, 1.0), cut("gone.flac", "GONE")]
    (root / "audio" / "gone.flac").unlink()  # damaged after the recipe listed them
    (root / "audio" / "broken.flac").write_bytes(b"fLaC not really")
    web = lhotse.Recording(id="web", sources=[lhotse.AudioSource("url", [0], "https://example.org/a.flac")],
                           sampling_rate=16000, num_samples=16000, duration=1.0).to_cut()
    web.supervisions = [SupervisionSegment("web", "web", 0.0, 1.0, text="ON THE WEB")]
    for c in cuts:  # a recipe stores paths relative to where it ran: here, the corpus folder
        for source in c.recording.sources:
            source.source = str(Path(source.source).relative_to(root))
    CutSet.from_cuts(cuts + [web]).to_file(root / "librispeech_cuts_train-clean-5.jsonl.gz")
    CutSet.from_cuts(cuts[:1]).to_file(root / "cuts_dev.jsonl")
    return root


def test_lhotse_cutset_prepares_segments_channels_and_damage_like_the_other_corpora(tmp_path):
    root = write_lhotse_corpus(tmp_path)
    out, manifest, rejects = prepared(tmp_path, "lhotse", corpora.lhotse_cuts(root))
    assert set(manifest["splits"]) == {"train-clean-5", "dev"}
    check_damage(out, "train-clean-5", manifest, rejects, ["book-0", "book-1.5", "stereo-0"], "stereo-0")
    rows = {r["id"]: r for r in read_split(out, "train-clean-5").to_pylist()}
    # each cut is its own segment of the recording, exactly
    whole = tone(3.0)
    for cut_id, start in (("book-0", 0), ("book-1.5", 24000)):
        audio = decode(rows[cut_id]["audio"])
        assert len(audio) == 24000 and np.abs(audio - whole[start:start + 24000]).max() < 1e-4
    assert rows["book-1.5"]["text"] == "SECOND HALF" and rows["book-0"]["speaker"] == "spk1"
    assert rows["book-0"]["language"] == "en"
    counted = manifest["rejected"]["train-clean-5"]
    assert counted["no supervision in the cut"] == 1
    assert counted["audio file not found"] == 1 and counted["audio source is a URL (nothing is downloaded)"] == 1
    assert any(r["id"] == "gone-0" and "gone.flac" in r["detail"] for r in rejects)


def test_lhotse_manifests_that_are_not_there_or_not_cutsets_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        corpora.lhotse_cuts(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CutSet manifests"):
        corpora.lhotse_cuts(tmp_path / "empty")
    (tmp_path / "cuts_train.jsonl").write_text('{"not": "a cut"}\n')
    with pytest.raises(DataError, match=r"cuts_train.jsonl is not a CutSet manifest"):
        corpora.lhotse_cuts(tmp_path / "cuts_train.jsonl")


def test_clotho_aqa(tmp_path):
    root = tmp_path / "clotho"
    write_audio(root / "audio_files" / "birds.wav", 1.0, rate=44100)
    write_audio(root / "audio_files" / "rain.wav", 1.2, rate=44100, channels=2)
    (root / "audio_files" / "broken.wav").write_bytes(b"RIFFjunk")
    write_audio(root / "audio_files" / "long.wav", 2.5, rate=44100)
    with open(root / "clotho_aqa_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "QuestionText", "answer", "confidence"])
        for file, question, answers in [("birds.wav", "Are birds singing?", ["yes", "yes", "no"]),
                                        ("rain.wav", "What is falling?", ["rain", "rain", "water"]),
                                        ("broken.wav", "Is it loud?", ["no", "no", "no"]),
                                        ("long.wav", "Is it long?", ["yes", "yes", "yes"]),
                                        ("rain.wav", "Is it windy?", ["", "", ""]),
                                        ("gone.wav", "Where is it?", ["here", "here", "here"])]:
            for answer in answers:
                writer.writerow([file, question, answer, "yes"])
    out, manifest, rejects = prepared(tmp_path, "clotho", corpora.clotho_aqa(root))
    rows = {r["prompt"]: r for r in read_split(out, "test").to_pylist()}
    assert set(rows) == {"Are birds singing?", "What is falling?"}
    assert rows["Are birds singing?"]["text"] == "yes" and rows["Are birds singing?"]["answers"] == ["yes", "yes", "no"]
    assert rows["What is falling?"]["text"] == "rain" and abs(rows["What is falling?"]["duration"] - 1.2) < 0.01
    assert manifest["rejected"]["test"] == {"audio file not found": 1, "empty transcript": 1, "undecodable audio": 1}
    assert manifest["filtered"]["test"] == {"audio longer than max_audio_length (2 s)": 1}
    assert "dev" not in manifest["splits"]  # no clotho_aqa_val.csv in the fixture


def test_generic_parquet_and_text_filter(tmp_path):
    rows = [{"wave": audio_bytes(1.0, fmt="WAV"), "sentence": "short"},
            {"wave": audio_bytes(1.0), "sentence": "x" * 101},
            {"wave": None, "sentence": "no audio"}]
    (tmp_path / "mine").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine" / "part-0.parquet")
    splits = corpora.generic_parquet([tmp_path / "mine"], audio_column="wave", text_column="sentence", split="train")
    out, manifest, _ = prepared(tmp_path, "generic", splits)
    assert read_split(out, "train").column("text").to_pylist() == ["short"]
    assert manifest["filtered"]["train"] == {"text longer than max_text_characters (100)": 1}
    assert manifest["rejected"]["train"] == {"no audio bytes": 1}
    with pytest.raises(DataError, match=r"lacks column\(s\) \['audio', 'text'\].*audio_column"):
        corpora.generic_parquet([tmp_path / "mine"])


def test_unfiltered_keeps_long_clips(tmp_path):
    splits = {"train": [corpora.RawItem("a", audio_bytes(2.5), "long", "mem")]}
    manifest = prepare_corpus("x", splits, tmp_path / "x", Filters(filter_dataset=False, max_audio_length=2.0),
                              workers=1, progress=False)
    assert manifest["splits"]["train"]["rows"] == 1


def test_all_rows_dropped_is_an_error_and_keeps_the_old_corpus(tmp_path):
    good = {"train": [corpora.RawItem("a", audio_bytes(1.0), "fine", "mem")]}
    prepare_corpus("x", good, tmp_path / "x", FILTERS, workers=1, progress=False)
    before = (tmp_path / "x" / "train.parquet").read_bytes()
    bad = {"train": [corpora.RawItem("b", audio_bytes(2.5), "too long", "mem")]}
    with pytest.raises(DataError, match="split 'train' has no usable rows.*max_audio_length"):
        prepare_corpus("x", bad, tmp_path / "x", FILTERS, workers=1, progress=False)
    assert (tmp_path / "x" / "train.parquet").read_bytes() == before
    assert not list(tmp_path.glob(".x.*"))


@pytest.mark.parametrize("reader,message", [
    (corpora.librispeech_raw, "does not exist"), (corpora.aishell1, "does not exist"),
    (corpora.clotho_aqa, "does not exist"), (corpora.aishell2, "does not exist")])
def test_missing_corpus_folder(tmp_path, reader, message):
    with pytest.raises(DataError, match=message):
        reader(tmp_path / "nowhere")


def test_wrong_layout_is_named(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.flac").write_bytes(audio_bytes(1.0))
    with pytest.raises(DataError, match="trans.txt"):
        corpora.librispeech_raw(tmp_path / "flat")
    with pytest.raises(DataError, match="aishell_transcript_v0.8.txt"):
        corpora.aishell1(tmp_path / "flat")


def test_parallel_preparation_matches_serial(tmp_path):
    items = [corpora.RawItem(f"u{i}", audio_bytes(0.5 + 0.1 * i, rate=22050), f"text {i}", "mem") for i in range(6)]
    prepare_corpus("s", {"train": items}, tmp_path / "serial", FILTERS, workers=1, progress=False)
    prepare_corpus("p", {"train": items}, tmp_path / "parallel", FILTERS, workers=2, progress=False)
    assert (tmp_path / "serial" / "train.parquet").read_bytes() == (tmp_path / "parallel" / "train.parquet").read_bytes()
