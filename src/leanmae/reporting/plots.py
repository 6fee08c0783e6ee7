"""Figures a person can read: titled axes, units, legends; written atomically as PNG."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.artist import Artist  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402
from scipy.ndimage import uniform_filter1d  # noqa: E402

from leanmae.files import write_atomic  # noqa: E402

SMOOTH_FROM = 60  # epochs from which a loss curve is drawn as a running mean over its raw line


def save_figure(fig: Figure, path: Path | str, dpi: int = 110) -> Path:
    """Save ``fig`` to ``path`` by rename, so a half-written PNG never replaces a good one."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


def legend_outside(
    fig: Figure, handles: list[Artist] | None = None, below: bool = False, **kwargs: Any
) -> None:
    """One legend for the whole figure, right of (or below) every panel: inside a panel it covers the very
    curves a reader looks for. The figure must use the constrained layout, which makes room for it; an
    entry every panel repeats (one line per arm in each) appears once."""
    if handles is None:
        found: dict[str, Artist] = {}
        for ax in fig.axes:
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                found.setdefault(label, handle)
        handles = list(found.values())
    fig.legend(
        handles=handles, loc="outside lower center" if below else "outside right upper", fontsize=8, **kwargs
    )


def loss_curve(history: list[dict[str, float]], path: Path | str, title: str) -> Path:
    """loss.png: training and validation loss per epoch.

    On a log axis, because a linear one spends its height on the first epochs and flattens the slow
    descent that decides whether more epochs would help; past ``SMOOTH_FROM`` epochs each line is its
    running mean over a twentieth of the epochs, over the thin per-epoch line, which is noise at that length.
    """
    epochs = np.array([row["epoch"] for row in history])
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    for key, name in (("train_loss", "train"), ("val_loss", "validation")):
        if key not in history[0]:
            continue
        values = np.array([row[key] for row in history])
        if len(values) < SMOOTH_FROM:
            ax.plot(epochs, values, marker="o", ms=3, label=name)
            continue
        window = len(values) // 20
        raw = ax.plot(epochs, values, lw=0.8, alpha=0.35)[0]
        ax.plot(
            epochs,
            uniform_filter1d(values, window, mode="nearest"),
            color=raw.get_color(),
            label=f"{name}: {window}-epoch running mean (thin: per epoch)",
        )
    if all(row[key] > 0 for row in history for key in ("train_loss", "val_loss") if key in row):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 5, 7)))  # labels where the tail lies
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.2, not 2 x 10^-1
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="epoch", ylabel="loss (log scale)" if ax.get_yscale() == "log" else "loss", title=title)
    ax.grid(alpha=0.3, which="both")
    legend_outside(fig, below=True, ncols=2)
    return save_figure(fig, path)


def training_curves(history: list[dict[str, float]], path: Path | str, title: str) -> Path:
    """training_curves.png: loss (train, validation) and validation accuracy / macro-F1 per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    left.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss")
    left.plot(epochs, [r["val_loss"] for r in history], marker="s", label="validation loss")
    left.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    right.plot(epochs, [r["val_accuracy"] for r in history], marker="o", label="validation accuracy")
    right.plot(epochs, [r["val_macro_f1"] for r in history], marker="s", label="validation macro-F1")
    right.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1.02))
    for ax in (left, right):
        ax.grid(alpha=0.3)
    legend_outside(fig, below=True, ncols=4)
    fig.suptitle(title)
    return save_figure(fig, path)


def confusion_plot(matrix: list[list[int]], labels: list[str], path: Path | str, title: str) -> Path:
    """confusion_matrix.png: counts, rows = true class, columns = predicted class."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    ConfusionMatrixDisplay(confusion_matrix=np.asarray(matrix), display_labels=labels).plot(
        ax=ax, colorbar=False, cmap="Blues", xticks_rotation=30
    )
    ax.set_title(title)
    return save_figure(fig, path)


def confidence_boxplot(
    groups: dict[str, dict[str, np.ndarray]], labels: list[str], path: Path | str, title: str
) -> Path:
    """The seed's figure: confidence per true class, correct (green) beside wrong (red) predictions.

    ``groups`` maps an arm name (e.g. "scratch", "MAE") to {"true": labels, "probs": probabilities}; each
    arm has its own panel, one above the other on the same axes, so an arm's boxes are read against the
    next one's. Why not side by side in one panel: with four arms the boxes of a class grew thin, the
    figure 3,500 pixels wide, and every arm after the first looked the same.
    """
    arms = list(groups)
    fig, axes = plt.subplots(
        len(arms),
        1,
        figsize=(max(6, 1.4 * len(labels)), 1.2 + 2.6 * len(arms)),
        sharex=True,
        sharey=True,
        squeeze=False,
        layout="constrained",
    )
    colors = {"correct": "#4c9f70", "wrong": "#d1495b"}
    for ax, arm in zip(axes[:, 0], arms, strict=True):
        y, probs = groups[arm]["true"], groups[arm]["probs"]
        pred, conf = probs.argmax(1), probs.max(1)
        for k, outcome in enumerate(("correct", "wrong")):
            data = [conf[(y == c) & ((pred == y) == (outcome == "correct"))] for c in range(len(labels))]
            box = ax.boxplot(
                data,
                positions=np.arange(len(labels)) - 0.2 + 0.4 * k,
                widths=0.35,
                patch_artist=True,
                showfliers=True,
                flierprops={"markersize": 2},
            )
            for patch in box["boxes"]:
                patch.set_facecolor(colors[outcome])
                patch.set_alpha(0.85)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel("confidence")
        if len(arms) > 1:
            ax.set_title(arm, fontsize=10, loc="left")
    axes[-1, 0].set_xticks(np.arange(len(labels)), labels, rotation=20)
    handles = [Patch(facecolor=colors[o], alpha=0.85, label=f"{o} predictions") for o in ("correct", "wrong")]
    legend_outside(fig, handles, below=True, ncols=2)
    fig.suptitle(f"{title}\n(confidence: the probability of the predicted class)", fontsize=11)
    return save_figure(fig, path)


def reliability_figure(
    before: dict[str, np.ndarray],
    after: dict[str, np.ndarray],
    ece: tuple[float, float],
    temperature: float,
    path: Path | str,
    title: str,
) -> Path:
    """reliability.png: accuracy against confidence per bin, with the confidence histogram, before and after
    scaling."""
    fig, axes = plt.subplots(
        2, 2, figsize=(10, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True, layout="constrained"
    )
    for col, (bins, name, e) in enumerate(
        [
            (before, "before scaling", ece[0]),
            (after, f"after temperature scaling (T = {temperature:.2f})", ece[1]),
        ]
    ):
        centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
        width = bins["edges"][1] - bins["edges"][0]
        top, bottom = axes[0, col], axes[1, col]
        top.bar(
            centers,
            np.nan_to_num(bins["accuracy"]),
            width=width * 0.9,
            color="#4c72b0",
            label="accuracy in bin",
        )
        top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
        top.set(title=f"{name}: ECE {e:.3f}", ylabel="accuracy", ylim=(0, 1))
        bottom.bar(centers, bins["count"], width=width * 0.9, color="#999")
        bottom.set(xlabel="confidence (probability of predicted class)", ylabel="images")
    legend_outside(fig, below=True, ncols=2)
    fig.suptitle(title)
    return save_figure(fig, path)


def risk_coverage_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]],
    threshold_point: tuple[float, float] | None,
    path: Path | str,
    title: str,
) -> Path:
    """risk_coverage.png: error rate of the kept predictions against the share kept (most confident first)."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for name, (coverage, risk, aurc) in curves.items():
        ax.plot(coverage, risk, label=f"{name} (AURC {aurc:.4f})")
    if threshold_point:
        ax.scatter(
            [threshold_point[0]],
            [threshold_point[1]],
            color="#d1495b",
            zorder=3,
            label="refer-to-expert threshold",
        )
    ax.set(
        xlabel="coverage (share of predictions kept)",
        ylabel="risk (error rate among kept)",
        title=title,
        xlim=(0, 1),
    )
    ax.grid(alpha=0.3)
    legend_outside(fig, below=True, ncols=3)
    return save_figure(fig, path)


def reconstruction_grid(panels: dict[str, np.ndarray], path: Path | str, title: str) -> Path:
    """reconstructions.png: one row per image, one column per panel (evaluation.reconstruction_panels)."""
    names = list(panels)
    rows = len(panels[names[0]])
    fig, axes = plt.subplots(rows, len(names), figsize=(2 * len(names), 2 * rows + 0.6), squeeze=False)
    for r in range(rows):
        for c, name in enumerate(names):
            axes[r, c].imshow(panels[name][r], interpolation="nearest")
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
