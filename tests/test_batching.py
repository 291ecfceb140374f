"""From prepared splits to batches: collator, length-grouped batches, and the `steermoe data` commands."""
import subprocess
import sys

import torch

from steermoe.model.features import AudioFeatures
from steermoe.run.batching import Collator, LengthGroupedBatches, AudioRows
from tests.tiny import tiny_model


def test_length_grouped_batches_cover_everything_once_and_group_lengths():
    durations = [((i * 7919) % 97) / 10 + 0.5 for i in range(403)]
    sampler = LengthGroupedBatches(durations, batch_size=8, seed=1, window=10)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 51
    assert sorted(i for b in batches for i in b) == list(range(403))
    spread = sum(max(durations[i] for i in b) - min(durations[i] for i in b) for b in batches) / len(batches)
    assert spread < 1.0  # random batches would spread about 6 s
    assert list(sampler) == batches  # same epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_collator_feeds_the_model(tmp_path):
    from steermoe.data.synth_en import build_synth_en

    build_synth_en(tmp_path / "c", {"train": 6, "dev": 1, "test": 1}, workers=1, progress=False)
    split = AudioRows.prepared(tmp_path / "c", "train")
    rows = [split[i] for i in range(4)]
    batch = Collator(AudioFeatures("whisper", 80), "transcribe: ")(rows)
    assert batch["features"].shape[:2] == (4, 80) and batch["features"].shape[2] == int(batch["feature_lengths"].max())
    assert batch["targets"] == [r["text"] for r in rows] and batch["prompts"] == ["transcribe: "] * 4
    # padded to the batch's longest utterance, not to 30 s
    assert batch["features"].shape[2] == max(len(r["audio"]) for r in rows) // 160
    model = tiny_model("layer_wise")
    loss = model(batch["features"], batch["feature_lengths"], batch["targets"], batch["prompts"]).loss
    assert torch.isfinite(loss)


def test_data_cli_synth_and_bad_input(tmp_path):
    out = subprocess.run([sys.executable, "-m", "steermoe.cli", "data", "synth", "synth-aqa", "--out",
                          str(tmp_path / "aqa"), "--sizes", "train=4", "dev=1", "test=2", "--workers", "1"],
                         capture_output=True, text=True, check=True)
    assert "synth-aqa/train: 4 rows" in out.stdout
    out = subprocess.run([sys.executable, "-m", "steermoe.cli", "data", "prepare", "--corpus", "aishell1", "--root",
                          str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert out.returncode == 2 and "AISHELL-1" in out.stderr and "Traceback" not in out.stderr


def noise_parquet(path, rows, first=0, row_group_size=5, seconds=lambda i: 0.5 + (i * 37 % 11) / 10, **extra):
    """A parquet file of `rows` utterances of white noise (FLAC barely compresses it: about 32 kB a second)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from steermoe.data.audio import encode_flac

    rng = np.random.default_rng(first)
    audio = [encode_flac(rng.uniform(-0.5, 0.5, int(16000 * seconds(i))).astype("float32"))
             for i in range(first, first + rows)]
    table = {"id": [f"utt{i}" for i in range(first, first + rows)], "audio": audio,
             "text": [f"text {i}" for i in range(first, first + rows)], **extra}
    pq.write_table(pa.table(table), path, row_group_size=row_group_size)
    return path


def test_lazy_rows_give_the_same_batches_and_audio_as_reading_the_files_whole(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from steermoe.run.loading import dev_holdout

    (tmp_path / "split").mkdir()
    files = [noise_parquet(tmp_path / "split" / "a.parquet", 23), noise_parquet(tmp_path / "split" / "b.parquet", 18,
                                                                               first=23, row_group_size=4)]
    whole = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()  # what the loader held before
    rows = AudioRows.from_parquet([str(tmp_path / "split")])
    assert rows.columns["id"] == [r["id"] for r in whole]
    train, dev = dev_holdout(rows)
    for batches, part in ((list(LengthGroupedBatches(train.durations, 4, seed=3)), train), ([[0]], dev)):
        for batch in batches:
            for i in batch:
                expected = whole[rows.columns["id"].index(part.columns["id"][i])]
                assert part.audio_bytes(i) == expected["audio"] and part[i]["text"] == expected["text"]
    # a loader worker gets the index, not the audio: the pickled rows are a small part of the files
    import pickle

    assert len(pickle.dumps(rows)) < sum(f.stat().st_size for f in files) / 10


def test_reading_every_row_of_a_corpus_larger_than_the_cache_keeps_memory_bounded(tmp_path):
    import pyarrow as pa

    file = noise_parquet(tmp_path / "big.parquet", 240, seconds=lambda i: 3.0, row_group_size=8)  # ~22 MB
    rows = AudioRows.from_parquet([str(file)])
    group = file.stat().st_size / 30  # one row group's audio
    held, peak = pa.total_allocated_bytes(), 0  # what earlier tests in this process still hold
    for i in sorted(range(len(rows)), key=lambda i: (i * 53) % 240):  # out of file order, as training reads
        rows.audio_bytes(i)
        peak = max(peak, pa.total_allocated_bytes() - held)
    assert len(rows._groups) == AudioRows.ROW_GROUP_CACHE
    # the cached groups, and the one being read with its buffers
    assert peak < (AudioRows.ROW_GROUP_CACHE + 4) * group < file.stat().st_size / 3


def test_an_undecodable_row_is_named_with_its_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pytest

    from steermoe.errors import DataError

    table = pq.read_table(noise_parquet(tmp_path / "x.parquet", 9, row_group_size=4)).to_pylist()
    table[6]["audio"] = b"not audio at all"
    with_durations = [{**r, "duration": 1.0} for r in table]
    pq.write_table(pa.Table.from_pylist(with_durations), tmp_path / "x.parquet", row_group_size=4)
    rows = AudioRows.from_parquet([str(tmp_path / "x.parquet")])
    rows[5]
    with pytest.raises(DataError, match=r"utterance 'utt6': undecodable audio.*\(\S+x\.parquet row 6\)"):
        rows[6]
    # without a duration column the headers are read up front: the same row is named before training starts
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "y.parquet", row_group_size=4)
    with pytest.raises(DataError, match=r"y\.parquet row 6: undecodable audio"):
        AudioRows.from_parquet([str(tmp_path / "y.parquet")])
    # the file removed after its index was read: named, not a bare pyarrow error
    (tmp_path / "x.parquet").unlink()
    with pytest.raises(DataError, match=r"cannot read \S+x\.parquet .*moved, removed or changed after the run read"):
        rows[0]


def test_loader_workers_default_to_none_on_the_cpu_and_to_the_threads_but_one_on_a_gpu(monkeypatch):
    from steermoe.declare.settings import MAX_LOADER_WORKERS
    from steermoe.run.batching import loader_options, loader_workers

    assert loader_workers(None) == 0 and loader_workers(3) == 3 and loader_options(0) == {"num_workers": 0,
                                                                                         "pin_memory": False}
    threads = torch.get_num_threads()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the rule a GPU job follows
    try:
        for given, expected in ((1, 1), (4, 3), (64, MAX_LOADER_WORKERS)):
            torch.set_num_threads(given)
            assert loader_workers(None) == expected
        assert loader_options(3) == {"num_workers": 3, "pin_memory": True, "prefetch_factor": 4}
    finally:
        torch.set_num_threads(threads)
