"""The matrix's figures (matplotlib, drawn off-screen).

steermoe aggregate: plots/metrics.png (headline metric with CI per experiment), plots/steering_gates.png (gate use
per experiment with steering), plots/training_curves.png (training and dev loss).
"""
from __future__ import annotations

import math

from steermoe.declare.experiments import Experiment
from steermoe.figures import figure_bytes, pyplot
from steermoe.report.results import OK, STALE, ExperimentResult
from steermoe.report.tables import ci_bounds


def _empty(plt, message: str) -> bytes:
    """A figure that says why there is nothing to draw (every output file exists even then)."""
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return figure_bytes(fig)


def plot_metrics(experiments: list[Experiment], results: dict[str, ExperimentResult],
                 summaries: dict | None = None) -> bytes:
    """Headline metric per experiment with its 95 % CI, one panel per test set, colour by method. A replicate set is
    one line: each seed's value (small circles), the mean with its crossed-bootstrap CI (diamond), and the mean +- one
    standard deviation across seeds (thick bar); `summaries` are the table's summary rows by set name."""
    plt = pyplot()
    summaries = summaries or {}
    datasets: dict[str, dict[str, list]] = {}  # test set -> line label -> its experiments (a set's seeds, or one)
    for exp in experiments:
        label = exp.replicate_of or str(exp.id)
        panel = "/".join(str(part) for part in (exp.dataset, exp.test_set) if part)
        datasets.setdefault(panel, {}).setdefault(label, []).append(exp)
    methods = list(dict.fromkeys(str(e.method) for e in experiments))
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    if not experiments:
        return _empty(plt, "no experiments in the matrix")
    heights = [max(1.5, 0.35 * len(lines) + 1) for lines in datasets.values()]
    fig, axes = plt.subplots(len(datasets), 1, figsize=(9, sum(heights) + 0.5), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (dataset, lines) in zip(axes[:, 0], datasets.items()):
        labels, metric_names = [], set()
        for y, (label, members) in enumerate(lines.items()):
            colour = colours[str(members[0].method)]
            done = [results[str(e.id)] for e in members]
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
                status = summary["status"] if summary else results[str(members[0].id)].status
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
    return figure_bytes(fig)


def plot_steering_gates(experiments: list[Experiment], results: dict[str, ExperimentResult]) -> bytes:
    """Per experiment with steering: mean gate per site and expert, and normalised entropy / layer scales."""
    plt = pyplot()
    found = [(r.id, r.steering) for r in (results[str(e.id)] for e in experiments)
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
    return figure_bytes(fig)


def plot_training_curves(experiments: list[Experiment], results: dict[str, ExperimentResult]) -> bytes:
    """Training loss and dev loss against the step, one line per trained experiment."""
    plt = pyplot()
    curves = []
    for exp in experiments:
        r = results[str(exp.id)]
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
    return figure_bytes(fig)
