"""Every figure (matplotlib, drawn off-screen): the matrix's plots and one evaluation's steering plot.

steermoe aggregate: plots/metrics.png (headline metric with CI per experiment), plots/steering_gates.png (gate use
per experiment with steering), plots/training_curves.png (training and dev loss). steermoe evaluate: steering.png
(one experiment's gate use, router entropy, layer scales and steering-vector norms).
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from steermoe.fsutil import write_atomic
from steermoe.results import OK, STALE, ExperimentResult, get_field
from steermoe.tables import ci_bounds


def _figure_bytes(fig) -> bytes:
    """The figure as PNG bytes, without the matplotlib version in the metadata (the same plot, the same bytes)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    """pyplot on the off-screen Agg backend, imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _empty(plt, message: str) -> bytes:
    """A figure that says why there is nothing to draw (every output file exists even then)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return _figure_bytes(fig)


def plot_metrics(experiments: list, results: dict[str, ExperimentResult], summaries: dict | None = None) -> bytes:
    """Headline metric per experiment with its 95 % CI, one panel per test set, colour by method. A replicate set is
    one line: each seed's value (small circles), the mean with its crossed-bootstrap CI (diamond), and the mean +- one
    standard deviation across seeds (thick bar); `summaries` are the table's summary rows by set name."""
    plt = _pyplot()
    summaries = summaries or {}
    datasets: dict[str, dict[str, list]] = {}  # test set -> line label -> its experiments (a set's seeds, or one)
    for exp in experiments:
        label = get_field(exp, "replicate_of") or str(get_field(exp, "id"))
        panel = "/".join(str(part) for part in (get_field(exp, "dataset"), get_field(exp, "test_set")) if part)
        datasets.setdefault(panel, {}).setdefault(label, []).append(exp)
    methods = list(dict.fromkeys(str(get_field(e, "method")) for e in experiments))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    if not experiments:
        return _empty(plt, "no experiments in the matrix")
    heights = [max(1.5, 0.35 * len(lines) + 1) for lines in datasets.values()]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(9, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (dataset, lines) in zip(axes[:, 0], datasets.items()):
        labels, metric_names = [], set()
        for y, (label, members) in enumerate(lines.items()):
            colour = colours[str(get_field(members[0], "method"))]
            done = [results[str(get_field(e, "id"))] for e in members]
            done = [r for r in done if r.status in (OK, STALE) and r.metrics.get("value") is not None]
            summary = summaries.get(label)
            labels.append(label + (f" ({len(members)} seeds)" if summary else ""))
            if summary and summary.get("value") is not None:
                value, low, high, std = summary["value"], summary["ci_low"], summary["ci_high"], summary["std"]
                metric_names.add(summary["metric"])
                ax.plot([r.metrics["value"] for r in done], [y] * len(done), "o", mfc="none", ms=4, color=colour)
                ax.hlines(y, value - std, value + std, color=colour, lw=4, alpha=0.4)
                ax.errorbar(value, y, xerr=[[value - low], [high - value]], fmt="D", color=colour, capsize=4)
            elif done and not summary:
                r = done[0]
                value, (low, high) = r.metrics["value"], ci_bounds(r.metrics)
                metric_names.add(r.metrics["metric"])
                xerr = [[value - low], [high - value]] if low is not None else None
                ax.errorbar(value, y, xerr=xerr, fmt="o", color=colour, capsize=4)
            else:
                status = summary["status"] if summary else results[str(get_field(members[0], "id"))].status
                ax.annotate(status, (0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                            textcoords="offset points", va="center", fontsize=8, color="red")
                continue
            ax.annotate(f"{value:.3f}", (value, y), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=7)
        ax.set_yticks(range(len(lines)))
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_ylim(len(lines) - 0.5, -0.5)
        ax.set_title(f"{dataset}", fontsize=9)
        ax.set_xlabel(" / ".join(sorted(metric_names)) + " (95 % CI)" if metric_names else "no results yet",
                      fontsize=8)
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[m], label=m) for m in methods]
    fig.legend(handles=handles, loc="upper right", fontsize=7, title="method", title_fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    return _figure_bytes(fig)


def plot_steering_gates(experiments: list, results: dict[str, ExperimentResult]) -> bytes:
    """Per experiment with steering: mean gate per site and expert, and normalised entropy / layer scales."""
    plt = _pyplot()
    found = [(r.id, r.steering) for r in (results[str(get_field(e, "id"))] for e in experiments)
             if r.steering and r.steering.get("mean_gate")]
    if not found:
        return _empty(plt, "no experiment with steering has been evaluated")
    heights = [0.25 * len(s["mean_gate"]) + 1.2 for _, s in found]
    fig, axes = plt.subplots(len(found), 2, figsize=(10, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights, "width_ratios": [3, 2]})
    for (exp_id, s), (left, right) in zip(found, axes):
        gates = s["mean_gate"]
        image = left.imshow(gates, aspect="auto", cmap="viridis", vmin=0)
        left.set(xlabel="expert", ylabel="site", title=f"{exp_id}: mean gate", xticks=range(len(gates[0])))
        left.title.set_fontsize(8)
        fig.colorbar(image, ax=left)
        sites = list(range(len(gates)))
        if s.get("entropy"):
            top = s.get("max_entropy") or math.log(len(gates[0]))
            right.plot([e / top for e in s["entropy"]], sites, "o-", label="entropy / max")
        if s.get("layer_scales"):
            right.plot(s["layer_scales"], sites, "s-", label="layer scale")
        right.invert_yaxis()
        right.set(xlabel="value", title="router entropy and layer scales")
        right.title.set_fontsize(8)
        right.legend(fontsize=6, loc="lower right")
        right.grid(alpha=0.3)
    fig.tight_layout()
    return _figure_bytes(fig)


def plot_training_curves(experiments: list, results: dict[str, ExperimentResult]) -> bytes:
    """Training loss and dev loss against the step, one line per trained experiment."""
    plt = _pyplot()
    curves = []
    for exp in experiments:
        r = results[str(get_field(exp, "id"))]
        history = (r.summary or {}).get("log_history") or []
        train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
        dev = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
        if train or dev:
            curves.append((r.id, train, dev))
    if not curves:
        return _empty(plt, "no experiment has finished training")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (exp_id, train, dev) in enumerate(curves):
        colour = f"C{i % 10}"
        if train:
            axes[0].plot(*zip(*train), color=colour, label=exp_id)
        if dev:
            axes[1].plot(*zip(*dev), "o-", color=colour, label=exp_id)
    axes[0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[1].set(xlabel="step", ylabel="eval_loss", title="dev loss")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    return _figure_bytes(fig)


def plot_steering(analysis: dict, path: Path, title: str = "") -> None:
    """One evaluation's steering analysis (steermoe/analysis.py): gate-usage heatmap (sites x experts) with router
    entropy, layer scales and steering-vector norms beside it. Nothing is drawn without gates."""
    gates = analysis.get("mean_gate")  # (sites, experts)
    if not gates:
        return
    plt = _pyplot()
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
    write_atomic(path, _figure_bytes(fig))
