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
