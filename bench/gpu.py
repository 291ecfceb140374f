"""GPU: training samples/s, peak GPU memory and model FLOPs utilisation (MFU) at full size. Target >= 35 % MFU on
an H100. Runs wherever a CUDA GPU is present; on a CPU-only machine it says so and exits cleanly (exit code 0).

Model: Whisper-large-v3 encoder (32 x 1280, 128 mel bins) + Qwen2.5-7B (28 x 3584) built from the shipped shapes
(steermoe/model/shapes/*.json) with random weights: encoder in fp32 and LLM in bf16 as the product loads them, SDPA
attention in both, bf16 autocast, layer_wise SteerMoE (8 experts), pooling 4, dynamic encoder window. A batch of
--batch-size utterances of --seconds (default 12.7 s, LibriSpeech train-clean-100's mean) with a 45-token target
(~180 characters) and the LibriSpeech prompt. A step: forward, backward, global gradient clip, fused AdamW step.
Shapes carry no tokenizer: a stand-in gives one token per 4 bytes of text (as `steermoe plan` estimates).

MFU = model FLOPs per step / median step seconds / the GPU's dense bf16 peak (H100 SXM and H200: 989 TFLOP/s, H100 PCIe
756, A100 312; --peak-tflops for others). Model FLOPs per utterance are `steermoe.report.cost.utterance_flops` (see
steermoe/report/cost.py): frozen forward 2 P per position; frozen parts' backward computes activation gradients only (2
P per position, not 4 P: no weight gradients), and only where gradients must flow (the encoder from layer 1 on, for
steering inside it; the whole LLM, to reach the audio prompt); trainable parameters 6 P per position; plus attention
(encoder 4 D F^2 per layer forward, 8 D F^2 backward; decoder causal 2 W T^2 forward, 4 W T^2 backward) and the LM head
on the scored target positions only.

    python -m bench gpu [--quick] [--batch-size N] [--seconds S] [--steps N]
"""
from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import torch

from bench.common import arguments, median, report, verdict

TARGET = 0.35
ENCODER, DECODER = "whisper-large-v3", "qwen2.5-7b-instruct"
PROMPT = "please transcribe the audio content into text: "
TARGET_TEXT = ("he hoped there would be stew for dinner turnips and carrots and bruised potatoes and fat mutton "
               "pieces to be ladled out in thick peppered flour fattened sauce stuff it into you")  # ~180 bytes
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("GH200", 989.0), ("A100", 312.0)]
STEERMOE = {"method": "layer_wise", "num_experts": 8, "pooling_kernel_size": 4, "encoder_window": "dynamic"}


class BytesTokenizer:
    """Stands in for the decoder's tokenizer (shapes carry none): one token per 4 bytes of text."""

    eos_token_id, pad_token_id = 2, None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __call__(self, text: str, add_special_tokens: bool = False):
        data = text.encode("utf-8")
        ids = [3 + int.from_bytes(data[i:i + 4], "little") % (self.vocab_size - 3) for i in range(0, len(data), 4)]
        return SimpleNamespace(input_ids=ids)


def build(encoder_shape: str, decoder_shape: str, device: str):
    """The SteerMoE model with random weights from shipped shapes, on `device`."""
    from transformers import AutoModelForCausalLM

    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.model.encoders import encoder_from_config
    from steermoe.model.modeling import SteerMoEModel
    from steermoe.model.params import load_shape

    torch.manual_seed(0)
    enc_config, dec_config = load_shape(encoder_shape), load_shape(decoder_shape)
    enc_config._attn_implementation = "sdpa"
    with torch.device(device):
        encoder = encoder_from_config(enc_config, STEERMOE["encoder_window"]).float().eval()
        decoder = AutoModelForCausalLM.from_config(dec_config, dtype=torch.bfloat16, attn_implementation="sdpa")
        return SteerMoEModel(SteerMoEConfig(**STEERMOE), encoder, decoder.eval(),
                             BytesTokenizer(dec_config.vocab_size))


def model_flops(encoder_shape: str, decoder_shape: str, mel_frames: int, prompt_tokens: int,
                target_tokens: int) -> dict:
    """steermoe plan's training FLOPs of one utterance of this length (dynamic window)."""
    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.report.cost import model_shape, utterance_flops

    shape = model_shape(encoder_shape, decoder_shape, json.dumps(STEERMOE, sort_keys=True))
    frames = math.ceil(mel_frames / 2)  # Whisper's conv stem: stride 2
    return utterance_flops(shape, SteerMoEConfig(**STEERMOE).to_dict(), frames, prompt_tokens, target_tokens)[1]


def measure(encoder_shape: str, decoder_shape: str, device: str, batch_size: int, seconds: float, steps: int,
            warmup: int) -> dict:
    """Median step time, samples/s, peak memory and model FLOPs of training steps on random inputs."""
    model = build(encoder_shape, decoder_shape, device)
    cuda = device.startswith("cuda")
    mel_frames = round(seconds * 100)
    features = torch.randn(batch_size, model.encoder.num_mel_bins, mel_frames, device=device)
    lengths = torch.full((batch_size,), mel_frames, device=device)
    targets = [TARGET_TEXT] * batch_size
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=cuda)
    model.train()

    def step():
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = model(features, lengths, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    tok = model.tokenizer
    flops = model_flops(encoder_shape, decoder_shape, mel_frames, len(tok(PROMPT).input_ids),
                        len(tok(TARGET_TEXT).input_ids))
    seconds_per_step = median(times)
    return {"batch_size": batch_size, "seconds_per_utterance": seconds, "steps": steps, "warmup": warmup,
            "step_seconds": times, "median_step_seconds": seconds_per_step,
            "samples_per_second": batch_size / seconds_per_step,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "flops_per_utterance": flops, "achieved_tflops": flops["total"] * batch_size / seconds_per_step / 1e12}


def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS if key in name), None)


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--seconds", type=float, default=12.7, help="utterance length in seconds")
        parser.add_argument("--steps", type=int, help="timed steps (default 10; --quick 3)")
        parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")

    args = arguments(__doc__, argv, extra)
    if not torch.cuda.is_available():
        print("no CUDA GPU is present: the GPU benchmark needs one; skipped")
        return {}
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or peak_tflops(name)
    steps = args.steps or (3 if args.quick else 10)
    result = measure(ENCODER, DECODER, "cuda", args.batch_size, args.seconds, steps, warmup=1 if args.quick else 3)
    result.update(gpu=name, peak_tflops=peak, torch_cuda=torch.version.cuda)
    mfu = result["achieved_tflops"] / peak if peak else None
    result.update(mfu=mfu, target=TARGET, verdict=verdict(mfu, TARGET) if mfu is not None else
                  "not judged: unknown peak (give --peak-tflops)")
    rows = [[f"{ENCODER} + {DECODER}, batch {args.batch_size} x {args.seconds:g} s", result["samples_per_second"],
             result["peak_memory_gib"], result["achieved_tflops"], "n/a" if mfu is None else f"{100 * mfu:.1f} %"]]
    return report("gpu", args, result, ["model (bf16, SDPA)", "samples/s", "peak GiB", "TFLOP/s", "MFU"], rows)


if __name__ == "__main__":
    main()
