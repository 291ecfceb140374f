"""Steering analysis: how the router uses the experts at each layer, and what the steering parameters look like.

Written as JSON (training logs and evaluation): mean gate per layer and expert, gate entropy per layer, layer scales
and steering-vector norms; steermoe/plots.py draws it (plot_steering).
"""
from __future__ import annotations

import math
import torch

from steermoe.encoders import length_mask


class GateStats:
    """Accumulates router gates over batches, counting valid frames only."""

    def __init__(self):
        self.gate_sums: list[torch.Tensor] = []  # per site (N,)
        self.entropy_sums: list[float] = []
        self.frames: list[int] = []

    def add(self, gates: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """gates: per site, gates (B, T, N) and valid frames (B,)."""
        for site, (g, lengths) in enumerate(gates):
            valid = length_mask(lengths.to(g.device), g.shape[1])[..., None].float()  # (B, T, 1)
            g = g.detach().float()
            entropy = -(g.clamp(min=1e-12).log() * g).sum(-1, keepdim=True)  # (B, T, 1)
            if site == len(self.gate_sums):
                self.gate_sums.append(torch.zeros(g.shape[-1]))
                self.entropy_sums.append(0.0)
                self.frames.append(0)
            self.gate_sums[site] += (g * valid).sum((0, 1)).cpu()
            self.entropy_sums[site] += float((entropy * valid).sum())
            self.frames[site] += int(valid.sum())

    def merge(self, other: "GateStats") -> None:
        """Add another accumulator's sums (merging batches in order gives the same sums as adding them here)."""
        for site in range(len(other.frames)):
            if site == len(self.gate_sums):
                self.gate_sums.append(torch.zeros_like(other.gate_sums[site]))
                self.entropy_sums.append(0.0)
                self.frames.append(0)
            self.gate_sums[site] += other.gate_sums[site]
            self.entropy_sums[site] += other.entropy_sums[site]
            self.frames[site] += other.frames[site]

    def result(self) -> dict:
        if not self.frames:
            return {}
        n = len(self.gate_sums[0])
        return {"mean_gate": [(s / max(f, 1)).tolist() for s, f in zip(self.gate_sums, self.frames)],
                "entropy": [e / max(f, 1) for e, f in zip(self.entropy_sums, self.frames)],
                "max_entropy": math.log(n), "frames": self.frames}


def steering_parameters(model) -> dict:
    """Layer scales (L,) and steering-vector norms (L, N) of a model with steering; {} without."""
    if model.steering is None:
        return {}
    return {"layer_scales": model.steering.layer_scales.detach().float().tolist(),
            "vector_norms": model.steering.steering_vectors.detach().float().norm(dim=-1).tolist()}


def scalars(analysis: dict) -> dict[str, float]:
    """Flat scalars for TensorBoard: entropy and scale per site, mean vector norm per site."""
    out = {}
    for site, value in enumerate(analysis.get("entropy", [])):
        out[f"steering/entropy/site_{site:02d}"] = value
    for site, value in enumerate(analysis.get("layer_scales", [])):
        out[f"steering/scale/site_{site:02d}"] = value
    for site, norms in enumerate(analysis.get("vector_norms", [])):
        out[f"steering/vector_norm/site_{site:02d}"] = sum(norms) / len(norms)
    return out
