"""Data at scale: host memory against hours of training audio, the loader's rate against a GPU's demand, and the
preparation's rate.

1. Peak RSS of a training process (the embedded default experiment: models loaded, rows read, filtered and held
   out, two steps) on synth-en's train split repeated under new ids to 1 h, 10 h and 100 h of audio (--quick: 0.1,
   0.5, 2 h). Each size runs in its own child process (VmHWM). Target: the largest within 1.2x of the smallest.
2. Loader utterances/s on 15-s clips: FLAC decoding plus features (Whisper 128-mel; FireRedASR's 80-bin Kaldi fbank),
   per CPU core (one process) and with kaldi-native-fbank's frame-by-frame extractor beside ours; projected to the
   loader workers a GPU process of the catalog's qwen7b job gets (its threads per GPU, less one), against the
   utterances/s one H100 consumes at 400 TFLOP/s by the plan's FLOP model (Whisper-large-v3 + Qwen2.5-7B and
   FireRedASR-AED-L + Qwen2.5-7B). Target: at least 2x the demand.
3. Preparation: a LibriSpeech-layout tree (44.1 kHz stereo FLAC, 12-s utterances) prepared by `prepare_corpus` with
   1 and 2 workers: hours of audio per minute per core, and the projected time for 960 h on 16 cores.

    python -m bench data [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, arguments, catalog_run, report, synth_en, verdict

HOURS, QUICK_HOURS = (1, 10, 100), (0.1, 0.5, 2)
CLIP_SECONDS, H100_TFLOPS, DEMAND_TARGET, RSS_TARGET = 15.0, 400.0, 2.0, 1.2
PAIRS = {"whisper": ("whisper-large-v3", 128), "fireredasr": ("fireredasr-aed-l", 80)}


# ---- 1. memory against hours of audio --------------------------------------------------------------------------
def repeated_corpus(source: Path, hours: float, out: Path) -> Path:
    """A data folder whose synth-en/train.parquet is source's train split repeated under new ids up to `hours`
    (written a copy at a time: the writer never holds more than one); dev and test are source's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = pq.read_table(source / "synth-en" / "train.parquet")
    per_copy = sum(train.column("duration").to_pylist()) / 3600
    (out / "synth-en").mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(out / "synth-en" / "train.parquet", train.schema, compression="none") as writer:
        for n in range(max(1, math.ceil(hours / per_copy))):
            ids = pa.array([f"{utt}-copy{n}" for utt in train.column("id").to_pylist()])
            writer.write_table(train.set_column(0, "id", ids), row_group_size=256)
    for split in ("dev", "test", "test-unseen"):
        if (source / "synth-en" / f"{split}.parquet").is_file():
            (out / "synth-en" / f"{split}.parquet").symlink_to(source / "synth-en" / f"{split}.parquet")
    return out


def rss_child(data: str) -> dict:
    from bench.training import batches, setup, step
    from steermoe.run.loading import dev_holdout, filter_rows

    with tempfile.TemporaryDirectory() as tmp:
        run = catalog_run(Path(tmp), Path(data))
        trainer = setup(run)  # as training reads its rows: filtered by the length limits, a dev set held out
        trainer.train_dataset, _ = dev_holdout(filter_rows(trainer.train_dataset, trainer.model, run, "train",
                                                           log=lambda message: None))
        for indices in batches(trainer.train_dataset, 2, 2):
            step(trainer, indices)
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
        rows = trainer.train_dataset
        return {"rows": len(rows), "hours": sum(rows.durations) / 3600,
                "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024}


def memory_by_hours(hours: tuple, quick: bool) -> list[dict]:
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        source = synth_en(Path(tmp), quick)
        for h in hours:
            data = repeated_corpus(source, h, Path(tmp) / f"{h}h")
            proc = subprocess.run([sys.executable, "-m", "bench.data", "--rss-child", str(data)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            if proc.returncode:
                raise SystemExit(f"the {h} h child failed ({proc.returncode}): {proc.stdout[-2000:]}")
            size = (data / "synth-en" / "train.parquet").stat().st_size / 2**20
            found.append({"target_hours": h, "parquet_mib": size, **json.loads(proc.stdout.splitlines()[-1])})
            (data / "synth-en" / "train.parquet").unlink()
    return found


# ---- 2. the loader against a GPU's demand ----------------------------------------------------------------------
def clips(count: int) -> list[bytes]:
    """FLAC bytes of speech-like 15-s clips (harmonics with a moving pitch, plus noise)."""
    from steermoe.data.audio import encode_flac

    rng, t = np.random.default_rng(0), np.arange(int(CLIP_SECONDS * 16000)) / 16000
    out = []
    for n in range(count):
        phase = 2 * np.pi * np.cumsum(110 + 10 * n + 40 * np.sin(2 * np.pi * 3 * t)) / 16000
        wave = sum(np.sin(k * phase) / k for k in range(1, 20)) * 0.2 + 0.01 * rng.standard_normal(len(t))
        out.append(encode_flac(wave.astype(np.float32)))
    return out


def loader_rate(kind: str, mels: int, encoded: list[bytes], extractor=None) -> float:
    """Utterances/s of decoding and featurising on this process's one core (torch on one thread)."""
    import torch

    from steermoe.data.audio import decode
    from steermoe.model.features import AudioFeatures

    torch.set_num_threads(1)
    features = AudioFeatures(kind, mels)
    if extractor is not None:
        features.extractor = extractor
    features([decode(encoded[0])])  # warm-up
    start = time.perf_counter()
    for audio in encoded:
        features([decode(audio)])
    return len(encoded) / (time.perf_counter() - start)


class ReleaseFbank:
    """kaldi-native-fbank frame by frame, as FireRedASR's release calls it (the extractor ours replaced)."""

    def __init__(self, mels: int):
        import kaldi_native_fbank as knf

        self.knf, self.options = knf, knf.FbankOptions()
        self.options.frame_opts.dither, self.options.mel_opts.num_bins = 0.0, mels

    def __call__(self, waveform):
        import torch

        fbank = self.knf.OnlineFbank(self.options)
        fbank.accept_waveform(16000, (np.asarray(waveform, dtype=np.float32) * 32768.0).tolist())
        return torch.from_numpy(np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])).float()


def gpu_demand(encoder: str) -> float:
    """Utterances/s of 15-s clips one H100 at H100_TFLOPS trains on by the plan's FLOP model (with Qwen2.5-7B)."""
    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.report.cost import model_shape, utterance_flops
    from bench.gpu import PROMPT, STEERMOE, TARGET_TEXT

    shape = model_shape(encoder, "qwen2.5-7b-instruct", json.dumps(STEERMOE, sort_keys=True))
    frames = math.ceil(CLIP_SECONDS * shape.frames_per_second)
    parts = utterance_flops(shape, SteerMoEConfig(**STEERMOE).to_dict(), frames, len(PROMPT) / 4,
                            len(TARGET_TEXT) / 4)[1]
    return H100_TFLOPS * 1e12 / sum(parts.values())


def job_workers() -> int:
    """Loader workers of one GPU process of the catalog's qwen7b job: its threads per GPU, less one."""
    import yaml

    from steermoe.declare.settings import default_loader_workers

    resources = yaml.safe_load((REPO / "experiments" / "catalog.yaml").read_text())["decoders"]["qwen7b"]["resources"]
    return default_loader_workers(resources["threads"] // resources["gpus"], gpu=True)


# ---- 3. preparation --------------------------------------------------------------------------------------------
def librispeech_tree(root: Path, utterances: int, seconds: float = 12.0) -> Path:
    import soundfile as sf

    chapter = root / "train-clean-100" / "7" / "11"
    chapter.mkdir(parents=True)
    t = np.arange(int(seconds * 44100)) / 44100
    lines = []
    for i in range(utterances):
        mono = 0.3 * np.sin(2 * np.pi * (200 + 7 * i) * t) + 0.01 * np.random.default_rng(i).standard_normal(len(t))
        sf.write(chapter / f"7-11-{i:04d}.flac", np.stack([mono, 0.5 * mono], axis=1), 44100)
        lines.append(f"7-11-{i:04d} SOME WORDS OF UTTERANCE {i}\n")
    (chapter / "7-11.trans.txt").write_text("".join(lines))
    return root


def preparation(utterances: int) -> list[dict]:
    from steermoe.data.corpora import librispeech_raw
    from steermoe.data.layout import prepare_corpus

    found = []
    with tempfile.TemporaryDirectory() as tmp:
        root = librispeech_tree(Path(tmp) / "LibriSpeech", utterances)
        for workers in (1, 2):
            start = time.perf_counter()
            manifest = prepare_corpus("librispeech", librispeech_raw(root), Path(tmp) / f"out{workers}",
                                      workers=workers, progress=False)
            minutes = (time.perf_counter() - start) / 60
            hours = sum(split["hours"] for split in manifest["splits"].values())
            found.append({"workers": workers, "hours": hours, "minutes": minutes, "hours_per_minute": hours / minutes})
    return found


def main(argv=None) -> dict:
    args = arguments(__doc__, argv, lambda p: p.add_argument("--rss-child", help=argparse.SUPPRESS))
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child)))
        return {}
    memory = memory_by_hours(QUICK_HOURS if args.quick else HOURS, args.quick)
    rss_ratio = memory[-1]["peak_rss_mib"] / memory[0]["peak_rss_mib"]

    encoded, workers, loader = clips(8 if args.quick else 40), job_workers(), []
    for kind, (encoder, mels) in PAIRS.items():
        rates = {"ours": loader_rate(kind, mels, encoded)}
        if kind == "fireredasr":
            rates["kaldi-native-fbank"] = loader_rate(kind, mels, encoded, ReleaseFbank(mels))
        demand = gpu_demand(encoder)
        loader.append({"features": kind, "encoder": encoder, "per_core": rates, "workers": workers,
                       "with_workers": rates["ours"] * workers, "h100_demand": demand,
                       "ratio_to_demand": rates["ours"] * workers / demand})
    prep = preparation(8 if args.quick else 60)
    per_core = prep[0]["hours_per_minute"]
    result = {"memory": memory, "rss_ratio_largest_to_smallest": rss_ratio,
              "rss_verdict": verdict(rss_ratio, RSS_TARGET, higher_is_better=False), "loader": loader,
              "loader_verdicts": {r["features"]: verdict(r["ratio_to_demand"], DEMAND_TARGET) for r in loader},
              "preparation": prep, "projected_minutes_960h_16_cores": 960 / (per_core * 16)}
    rows = [[f"peak RSS, {m['hours']:.1f} h train ({m['rows']:,} rows, {m['parquet_mib']:,.0f} MiB parquet)",
             f"{m['peak_rss_mib']:,.0f} MiB", f"{m['peak_rss_mib'] / memory[0]['peak_rss_mib']:.2f}x"]
            for m in memory]
    rows += [[f"loader {r['features']} ({name}), 15-s clips, one core", f"{rate:.0f} utt/s", ""]
             for r in loader for name, rate in r["per_core"].items()]
    rows += [[f"loader {r['features']} x {r['workers']} workers vs one H100's demand ({r['encoder']} + Qwen2.5-7B)",
              f"{r['with_workers']:.0f} vs {r['h100_demand']:.0f} utt/s", f"{r['ratio_to_demand']:.2f}x"]
             for r in loader]
    rows += [[f"preparation, {p['workers']} worker(s)", f"{p['hours_per_minute']:.2f} h/min",
              f"{p['hours_per_minute'] / per_core:.2f}x"] for p in prep]
    rows.append(["preparation of 960 h on 16 cores (projected from one)",
                 f"{result['projected_minutes_960h_16_cores']:.0f} min", ""])
    return report("data", args, result, ["what", "measured", "ratio"], rows)


if __name__ == "__main__":
    main()
