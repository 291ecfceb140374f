"""Precision: bf16 against fp32 on this machine, and what the precision policy chose (steermoe/run/precision.py).

Two measurements, side by side in one run:
  - matmul GFLOP/s of the frozen LLM's largest shape (SmolLM2's MLP: 576 x 1536, 160 tokens) and of the policy's own
    512 x 512 micro-benchmark, in fp32 and bf16;
  - the embedded default's training step (the catalog's synth-en experiment at its batch of 2, on the thread count
    the default matrix gives each job), fp32 against bf16 (autocast and frozen weights), interleaved round by round.
The verdict says whether the policy picked the faster of the two.

    python -m bench precision [--quick] [--repetitions N] [--threads N]
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.common import arguments, catalog_run, interleaved, median, report, synth_en
from bench.training import batches, setup, step

FORCED = {"fp32": {"bf16": "false", "dtype": "float32"}, "bf16": {"bf16": "true", "dtype": "bfloat16"}}


def linear_gflops(dtype: torch.dtype, tokens: int = 160, d_in: int = 576, d_out: int = 1536) -> float:
    from steermoe.run.precision import gflops

    x, w = torch.randn(tokens, d_in).to(dtype), torch.randn(d_out, d_in).to(dtype)
    return gflops(lambda: torch.nn.functional.linear(x, w), 2 * tokens * d_in * d_out)


def main(argv=None) -> dict:
    from steermoe.run import precision

    def extra(parser):
        parser.add_argument("--repetitions", type=int, help="timed training steps per precision")
        parser.add_argument("--threads", type=int, default=1,
                            help="torch threads (default 1: what each job of the default matrix gets on 2 cores)")

    args = arguments(__doc__, argv, extra)
    torch.set_num_threads(args.threads)
    repetitions = args.repetitions or (2 if args.quick else 8)
    chosen = precision.decide(precision.detect())
    matmul = {name: {"llm_mlp": linear_gflops(dtype), "square_512": precision.matmul_gflops(dtype)}
              for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = synth_en(tmp, quick=args.quick)
        trainers = {name: setup(catalog_run(tmp, data, batch_size="2", **forced)) for name, forced in FORCED.items()}
        plan = batches(trainers["fp32"].train_dataset, 2, 1 + repetitions, min_seconds=1.5)
        losses = {name: [] for name in trainers}
        times = interleaved({name: (lambda r, n=name: losses[n].append(step(trainers[n], plan[r])))
                             for name in trainers}, repetitions)
    seconds = {name: median(values) for name, values in times.items()}
    faster = min(seconds, key=seconds.get)
    result = {"threads": args.threads, "policy": {**precision.summary(), **chosen.record()},
              "matmul_gflops": matmul, "step_seconds": times, "median_step_seconds": seconds, "losses": losses,
              "bf16_step_slowdown": seconds["bf16"] / seconds["fp32"], "faster": faster,
              "verdict": "met" if chosen.precision == faster else f"missed (policy chose {chosen.precision}, "
                                                                  f"{faster} was faster)"}
    print(f"policy: {chosen.precision} ({chosen.reason})")
    rows = [[name + (" (policy's choice)" if name == chosen.precision else ""), seconds[name], 2 / seconds[name],
             matmul[name]["llm_mlp"], matmul[name]["square_512"]] for name in FORCED]
    return report("precision", args, result,
                  ["precision", "s/step (median)", "samples/s", "LLM-MLP matmul GFLOP/s", "512^2 GFLOP/s"], rows)


if __name__ == "__main__":
    main()
