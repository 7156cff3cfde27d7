"""Every figure the library draws, as PNG files: training curves, the confusion matrix, the search's Pareto plot
and the pilot's rung-against-rung plot. matplotlib is imported only when a figure is drawn, with the Agg
backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: list[dict[str, Any]], path: str) -> None:
    """Loss (train and val) and val top-1 (raw and EMA) against the epoch."""
    plt = _pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], label="train (label-smoothed)")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], label="val")
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.plot(epochs, [r["val_top1"] for r in history], label="val top-1")
    if "ema_val_top1" in history[0]:
        acc_ax.plot(epochs, [r["ema_val_top1"] for r in history], label="val top-1, EMA")
    acc_ax.set(xlabel="epoch", ylabel="%", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_confusion(result: dict[str, Any], path: str) -> None:
    """The confusion matrix as a heat map, rows normalised to the share of each true class."""
    plt = _pyplot()
    confusion = torch.tensor(result["confusion"], dtype=torch.float64)
    shares = (confusion / confusion.sum(1, keepdim=True).clamp(min=1)).numpy()
    classes = result["classes"]
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['model']} on {result['split']}: top-1 {result['top1']:.1f}%")
    if len(classes) <= 20:
        for t in range(len(classes)):
            for p in range(len(classes)):
                if confusion[t, p]:
                    color = "white" if shares[t, p] > 0.5 else "black"
                    ax.text(p, t, int(confusion[t, p]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def plot_pareto(points: list[tuple[int, str, float, float]], rungs: list[int], front: list[tuple[float, float]],
                references: dict[str, float], attrs: dict[str, Any], cost_label: str, caps: dict[str, float],
                path: str) -> None:
    """Top-1 at 8 bits (hold-out) against the cost. ``points``: ``(rung, kind, cost, top-1)`` with kind
    ``feasible``, ``infeasible`` (below --min-top1, drawn as crosses), ``reference`` (the prototype, a star) or
    ``over_cap`` (not trained, drawn at 0%); ``rungs``: the rungs that hold trials (one colour each);
    ``front``: the Pareto front's ``(cost, top-1)``; ``references``: models' costs, drawn as dotted lines;
    ``attrs``: the study's attributes (cost, fidelity, requirements, deployment, space)."""
    plt = _pyplot()
    cost = attrs["cost"]
    scale = 1e6 if cost == "macs" else 1e3 if cost == "params" else 1.0
    unit = {1e6: " (millions)", 1e3: " (thousands)"}.get(scale, "")
    fig, ax = plt.subplots(figsize=(9, 6))

    def of(rung: int | None, kind: str) -> tuple[list[float], list[float]]:
        chosen = [(c / scale, t) for r, k, c, t in points if k == kind and rung in (None, r)]
        return [c for c, _ in chosen], [t for _, t in chosen]

    colours = plt.get_cmap("viridis")([0.15 + 0.7 * i / max(1, len(rungs) - 1) for i in range(len(rungs))])
    for r, colour in zip(rungs, colours):
        epochs = attrs["fidelity"]["epochs"] * attrs["fidelity"]["eta"] ** r
        for kind, marker, label in (("feasible", "o", "feasible"), ("infeasible", "x", "below --min-top1")):
            xs, ys = of(r, kind)
            if xs:
                ax.scatter(xs, ys, marker=marker, color=colour, alpha=0.8, label=f"rung {r} ({epochs} ep): {label}")
        xs, ys = of(r, "reference")
        if xs:
            ax.scatter(xs, ys, marker="*", s=220, color=colour, edgecolor="black", zorder=5, label=f"prototype, rung {r}")
    xs, _ = of(None, "over_cap")
    if xs:
        ax.scatter(xs, [0.0] * len(xs), marker="x", color="grey", alpha=0.6, label="over a cap (not trained)")
    if front:
        ax.plot([c / scale for c, _ in front], [t for _, t in front], "-o", color="crimson", mfc="none", ms=11,
                zorder=4, label="Pareto front")
    if caps.get(cost):
        ax.axvline(caps[cost] / scale, color="red", linestyle="--", label=f"cap: {cost_label}")
    if attrs["requirements"].get("min_top1"):
        ax.axhline(attrs["requirements"]["min_top1"], color="red", linestyle=":", label="--min-top1")
    # labels alternate between two heights so that references of similar cost stay readable
    for i, (name, value) in enumerate(sorted(references.items(), key=lambda kv: kv[1])):
        ax.axvline(value / scale, color="black", linestyle=":", alpha=0.5)
        ax.annotate(name, (value / scale, 0.99 - 0.2 * (i % 2)), xycoords=("data", "axes fraction"), rotation=90,
                    va="top", ha="right", fontsize=8)
    deploy = attrs["deployment"]
    ax.set_xlabel(f"{cost_label}{unit} at {deploy['img_size']} px, {deploy['num_classes']} classes")
    ax.set_ylabel(f"hold-out top-1 at 8-bit weights (%), {attrs['fidelity']['img_size']} px training")
    ax.set_title(f"{Path(attrs['space']['name']).name} design search: accuracy vs cost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def plot_pilot(summary: dict[str, Any], path: str) -> None:
    """Hold-out top-1 at 8 bits, cheap rung against expensive rung, one labelled point per design."""
    plt = _pyplot()
    designs = summary["designs"]
    low = [d["low"]["top1"] for d in designs]
    high = [d["high"]["top1"] for d in designs]
    fig, ax = plt.subplots(figsize=(6, 5))
    for d, x, y in zip(designs, low, high):
        ax.scatter([x], [y], marker="*" if d["reference"] else "o", s=200 if d["reference"] else 40,
                   color="crimson" if d["reference"] else "tab:blue", edgecolor="black", zorder=3)
        ax.annotate(d["name"].removeprefix("pilot-") + (" (prototype)" if d["reference"] else ""), (x, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    stats = summary["agreement"]
    ax.set_xlabel(f"hold-out top-1 at 8 bits (%), {summary['low_epochs']} epochs")
    ax.set_ylabel(f"hold-out top-1 at 8 bits (%), {summary['high_epochs']} epochs")
    ax.set_title(f"{summary['space']} pilot: Kendall tau {stats['kendall_tau']:.2f} (p={stats['p_value']:.2g}), "
                 f"{stats['designs']} designs", fontsize=10)
    ax.margins(0.12)  # room for the labels of the outermost points
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def plot_attention(images: list[torch.Tensor], maps: list[list[torch.Tensor]], titles: list[list[str]], path: str,
                   row_labels: list[str]) -> None:
    """A grid with one row per entry of ``images``: the image ``(H, W, 3)`` in ``[0, 1]``, then each map
    ``(h, w)`` of ``maps[row]`` laid over the image in grey (nearest upsampling, so a cell shows the map's own
    resolution), titled ``titles[row][k]`` and the map's range. Each map spans its own colour scale, dark at
    its least attended pixel and bright at its most: a mean over many channels stays near 0.5 everywhere, so
    a fixed 0-1 scale would show nothing."""
    plt = _pyplot()
    rows, cols = len(images), 1 + max(len(row) for row in maps)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.6, 2.4 * rows), squeeze=False)
    for r, image in enumerate(images):
        height, width = image.shape[:2]
        axes[r][0].imshow(image.numpy())
        axes[r][0].set_title(row_labels[r], fontsize=8)
        grey = image.mean(-1).numpy()
        for c, (values, title) in enumerate(zip(maps[r], titles[r]), start=1):
            axes[r][c].imshow(grey, cmap="gray", vmin=0, vmax=1)
            low, high = float(values.min()), float(values.max())
            axes[r][c].imshow(values.numpy(), cmap="magma", vmin=low, vmax=max(high, low + 1e-6), alpha=0.7,
                              interpolation="nearest", extent=(0, width, height, 0))
            axes[r][c].set_title(f"{title}\n{low:.2f} (dark) to {high:.2f}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
