"""Evaluation: real-time factor of batched greedy decoding (batch 16) versus one utterance at a time. Target >= 4x.

The embedded default experiment's test config (catalog settings: greedy, max_new_tokens 40, eval batch 16) on the
synth-en test split. Batched: as `steermoe evaluate` decodes (longest first, batches of 16, SteerMoEModel.generate).
One at a time: the same utterances through model.generate alone. Both include the Collator's features; they
alternate round by round. The weights are the matrix's trained experiment (results/<id>/train/final) when it
exists, else untrained steering/projection (then every hypothesis tends to run to max_new_tokens, which favours
neither side: both decode the same number of tokens). Also checked: batched and single hypotheses are identical.

    python -m bench evaluation [--quick] [--checkpoint DIR] [--utterances N]
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import REPO, arguments, catalog_run, interleaved, median, report, synth_en, verdict

TARGET = 4.0


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--checkpoint", type=Path, help="trained weights (default: the matrix's, if any)")
        parser.add_argument("--utterances", type=int, help="test utterances decoded per round")

    args = arguments(__doc__, argv, extra)
    from steermoe.model.features import AudioFeatures
    from steermoe.run import precision
    from steermoe.run.batching import Collator
    from steermoe.run.checkpoint import load_trainable
    from steermoe.run.loading import load_model, load_rows

    workspace = tempfile.TemporaryDirectory()  # kept to the end: the rows read their audio from it lazily
    tmp = Path(workspace.name)
    run = catalog_run(tmp, synth_en(tmp), mode="test")
    ev = run.evaluation
    checkpoint = args.checkpoint or REPO / "results" / run.path.parent.name / "train" / "final"
    torch.manual_seed(run.top.seed)
    decision = precision.for_run(run)
    model = load_model(run, decision.weights).eval()
    weights = str(checkpoint) if (checkpoint / "model.safetensors").is_file() else "untrained"
    if weights != "untrained":
        load_trainable(model, checkpoint)
    rows = load_rows(run, run.top.parquet_dirs, "parquet_dirs")
    collate = Collator(AudioFeatures(model.encoder.kind, model.encoder.num_mel_bins, run.top.encoder_window),
                       run.top.textual_prompt)
    count = min(len(rows), args.utterances or (ev.batch_size if args.quick else 3 * ev.batch_size))
    order = sorted(range(count), key=lambda i: -rows.durations[i])
    audio_seconds = sum(rows.durations[i] for i in order)
    hypotheses = {"batched": {}, "single": {}}

    def decode(name: str, indices: list[int]):
        batch = collate([rows[i] for i in indices])
        with precision.autocast(decision):
            out = model.generate(batch["features"], batch["feature_lengths"], batch["prompts"],
                                 max_new_tokens=ev.max_new_tokens, num_beams=ev.num_beams)
        hypotheses[name].update(zip(indices, out))

    def batched(_):
        for first in range(0, count, ev.batch_size):
            decode("batched", order[first:first + ev.batch_size])

    def single(_):
        for i in order:
            decode("single", [i])

    decode("single", order[:1])  # warm-up
    repetitions = 1 if args.quick else 2
    times = interleaved({"batched": batched, "single": single}, repetitions, warmup=0)
    rtf = {name: median(values) / audio_seconds for name, values in times.items()}
    speedup = rtf["single"] / rtf["batched"]
    same = sum(hypotheses["batched"][i] == hypotheses["single"][i] for i in order)
    tokens = [len(model.tokenizer(hypotheses["batched"][i]).input_ids) for i in order]
    result = {**precision.record(decision, "cpu"), "utterances": count, "audio_seconds": audio_seconds,
              "weights": weights,
              "batch_size": ev.batch_size, "max_new_tokens": ev.max_new_tokens, "seconds": times, "rtf": rtf,
              "speedup": speedup, "identical_hypotheses": same, "mean_hypothesis_tokens": sum(tokens) / len(tokens),
              "target": TARGET, "verdict": verdict(speedup, TARGET)}
    table = [[f"batched (batch {ev.batch_size})", median(times["batched"]), rtf["batched"], speedup],
             ["one utterance at a time", median(times["single"]), rtf["single"], 1.0]]
    print(f"{count} utterances, {audio_seconds:.0f} s of audio, weights: {weights}; "
          f"{same}/{count} hypotheses identical batched and alone")
    return report("evaluation", args, result, ["decoding", "s (median)", "RTF", "x faster"], table)


if __name__ == "__main__":
    main()
