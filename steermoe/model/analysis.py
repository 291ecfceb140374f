"""Steering analysis: how the router uses the experts at each layer, and what the steering parameters look like.

Written as JSON (training logs and evaluation): mean gate per layer and expert, gate entropy per layer, layer scales
and steering-vector norms; plot_steering draws it (evaluation's steering.png).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from steermoe.figures import figure_bytes, pyplot
from steermoe.fsutil import write_atomic
from steermoe.model.encoders import length_mask


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


def plot_steering(analysis: dict, path: Path, title: str = "") -> None:
    """One evaluation's steering analysis (analyse, above): gate-usage heatmap (sites x experts) with router
    entropy, layer scales and steering-vector norms beside it. Nothing is drawn without gates."""
    gates = analysis.get("mean_gate")  # (sites, experts)
    if not gates:
        return
    plt = pyplot()
    sites = range(len(gates))
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.35 * len(gates) + 2.5), gridspec_kw={"width_ratios": [3, 1, 1]})
    image = axes[0].imshow(gates, aspect="auto", cmap="viridis", vmin=0)
    axes[0].set_xticks(range(len(gates[0])))
    axes[0].set(xlabel="expert", ylabel="steering site (encoder layer)", title="mean gate")
    fig.colorbar(image, ax=axes[0])
    for ax in axes:
        ax.set_yticks(list(sites))
    axes[1].barh(list(sites), analysis["entropy"])
    axes[1].axvline(analysis["max_entropy"], color="grey", linestyle="--", label="uniform")
    axes[1].set(xlabel="gate entropy (nats)", title="router entropy")
    axes[1].invert_yaxis()
    axes[1].legend(loc="lower right", fontsize=7)
    if analysis.get("layer_scales"):
        axes[2].barh(list(sites), analysis["layer_scales"], label="layer scale")
        norms = [sum(n) / len(n) for n in analysis["vector_norms"]]  # mean over experts, per site
        axes[2].plot(norms, list(sites), "o-", color="C1", label="mean vector norm")
        axes[2].invert_yaxis()
        axes[2].legend(loc="lower right", fontsize=7)
    axes[2].set(title="scales and norms")
    fig.suptitle(title)
    fig.tight_layout()
    write_atomic(path, figure_bytes(fig))
