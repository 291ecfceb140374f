"""The engine's smoke job: the embedded models, real synthesised speech, a few real SteerMoE training steps.

It overfits eight utterances on purpose: the loss must fall and the model must start to reproduce the sentences.
(The experiment matrix, with held-out data and honest metrics, is the product; this only proves the engine.)
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

SENTENCES = [
    "the cat sat on the mat", "open the window please", "we walked along the river",
    "she reads a book every night", "the train leaves at noon", "bring me a cup of tea",
    "the children play in the park", "it is raining in the city",
]


def run_smoke(models: Path, steps: int = 30, batch_size: int = 4, log=print) -> dict:
    from steermoe.data.tts import piper_speak
    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.embedded import import_models
    from steermoe.model.features import AudioFeatures
    from steermoe.model.modeling import build_model
    from steermoe.run import precision

    torch.manual_seed(0)
    folders = import_models(models, ["whisper-tiny.en", "smollm2-135m-instruct"], log=log)
    log(f"synthesising {len(SENTENCES)} utterances with piper")
    audio = [piper_speak(s) for s in SENTENCES]
    config = SteerMoEConfig(method="layer_wise", pooling_kernel_size=2)
    decision = precision.decide(precision.detect())
    log(f"precision {decision.precision} ({decision.reason})")
    model = build_model(config, folders["whisper-tiny.en"], folders["smollm2-135m-instruct"],
                        decoder_dtype=getattr(torch, decision.weights))
    features = AudioFeatures(model.encoder.kind, model.encoder.num_mel_bins, config.encoder_window)
    groups = model.parameter_groups()
    optimizer = torch.optim.AdamW([
        {"params": groups["steering_vectors"] + groups["layer_scales"], "lr": 1e-2},
        {"params": groups["router"], "lr": 1e-3},
        {"params": groups["projection"], "lr": 1e-2},
    ], weight_decay=0.0)
    model.train()
    losses, start = [], time.time()
    for step in range(steps):
        idx = [(step * batch_size + i) % len(SENTENCES) for i in range(batch_size)]
        feats, lengths = features([audio[i] for i in idx])
        with precision.autocast(decision):
            loss = model(feats, lengths, [SENTENCES[i] for i in idx]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        log(f"step {step + 1:>3}/{steps}  loss {losses[-1]:.3f}  {time.time() - start:6.1f}s")
    model.eval()
    feats, lengths = features(audio[:4])
    with precision.autocast(decision):
        hypotheses = model.generate(feats, lengths, max_new_tokens=16)
    for ref, hyp in zip(SENTENCES[:4], hypotheses):
        log(f"  ref: {ref}\n  hyp: {hyp}")
    return {**precision.record(decision, "cpu"), "losses": losses, "hypotheses": hypotheses,
            "seconds": time.time() - start}
