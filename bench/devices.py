"""Device: the embedded default's training step and batched greedy decoding on this process's device (its GPU if
one is visible, else the CPU), in the precision the policy chooses there. scripts/gpu-check.sh runs it once with the
GPU and once with CUDA_VISIBLE_DEVICES="" and compares the two.

Training: the catalog's synth-en experiment (layer_wise, Whisper tiny.en + SmolLM2-135M) at batch 8, the trainer's
full step (bench/training.py). Decoding: greedy, the catalog's max_new_tokens, at each --batch-sizes value over the
same utterances (test rows repeated to fill the largest batch); utterances per second.

    python -m bench devices [--quick] [--steps N] [--batch-sizes 1 16 64]
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import arguments, catalog_run, median, report, synth_en
from bench.training import batches, setup, step


def main(argv=None) -> dict:
    from steermoe.run import precision

    def extra(parser):
        parser.add_argument("--steps", type=int, help="timed training steps")
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64], help="decoding batch sizes")

    args = arguments(__doc__, argv, extra)
    steps = args.steps or (2 if args.quick else 10)
    device = precision.job_device()
    decision = precision.decide(precision.detect())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trainer = setup(catalog_run(tmp, synth_en(tmp, quick=args.quick)))
        model = trainer.model
        plan = batches(trainer.train_dataset, trainer.args.per_device_train_batch_size, 1 + steps, min_seconds=1.5)
        step(trainer, plan[0])  # warm-up: kernels, allocator
        seconds = []
        for indices in plan[1:]:
            start = time.perf_counter()
            step(trainer, indices)
            synchronize(device)
            seconds.append(time.perf_counter() - start)
        placed = {str(p.device) for p in model.parameters()}
        model.eval()
        rows = trainer.train_dataset
        largest = max(args.batch_sizes)
        utterances = [i % len(rows) for i in range(largest if not args.quick else min(largest, 8))]
        decoding = {}
        for size in args.batch_sizes:
            start = time.perf_counter()
            for first in range(0, len(utterances), size):
                batch = trainer.data_collator([rows[i] for i in utterances[first:first + size]])
                with precision.autocast(decision):
                    model.generate(batch["features"].to(device), batch["feature_lengths"].to(device),
                                   batch["prompts"], max_new_tokens=40)
            synchronize(device)
            decoding[size] = len(utterances) / (time.perf_counter() - start)
    step_seconds = median(seconds)
    result = {**precision.record(decision, device), "parameter_devices": sorted(placed),
              "batch_size": trainer.args.per_device_train_batch_size, "step_seconds": seconds,
              "median_step_seconds": step_seconds, "decode_utterances": len(utterances),
              "decode_utterances_per_second": decoding,
              **({"peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20)}
                 if device.type == "cuda" else {})}
    rows = [["training step (batch %d)" % result["batch_size"], f"{step_seconds:.3f} s"]]
    rows += [[f"greedy decoding, batch {size}", f"{rate:.1f} utt/s"] for size, rate in decoding.items()]
    print(f"device {device} ({decision.precision}); parameters on {', '.join(sorted(placed))}")
    return report("devices", args, result, ["what", str(device)], rows)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
