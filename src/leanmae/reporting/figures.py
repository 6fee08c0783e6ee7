"""The study's figures: learning curves with targets, label efficiency, training curves, confidence, MAE
errors.

Readable first: x ticks only at the label counts actually run, labelled with the count and the
percentage, no minor-tick labels on log axes, markers on every line (a one-epoch curve is a point),
layouts that keep titles apart.
"""

from __future__ import annotations

import csv
import math
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import NullLocator

from leanmae.evaluation.stats import estimate
from leanmae.reporting.learning import METRIC, METRIC_NAME, Answer
from leanmae.reporting.plots import confidence_boxplot, legend_outside, save_figure
from leanmae.reporting.runs import Run, arms, by_cell, labels_at, pct
from leanmae.reporting.tables import METRICS, NAMES
from leanmae.safe_csv import unescape


def _colors(names: list[str]) -> dict[str, str]:
    return dict(zip(names, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))


def _label_ticks(ax: Axes, ticks: dict[float, str]) -> None:
    """Log x axis with ticks only where runs are, each labelled (count over percentage); alternate rows when
    crowded."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(NullLocator())
    positions = sorted(ticks)
    labels = [ticks[x] for x in positions]
    lowered = [False]
    for before, x in pairwise(positions):
        lowered.append(x / before < 3 and not lowered[-1])  # a close neighbour: print this one a row lower
    ax.set_xticks(
        positions,
        [("\n\n" if low else "") + text for low, text in zip(lowered, labels, strict=True)],
        fontsize=8,
    )


def _x(run: Run) -> float:
    return float(run.labels.total or run.metrics["train_images"])


def learning_curve_figure(runs: list[Run], a: Answer, path: Path) -> Path:
    """Every run's macro-F1 against its labelled images; each arm's measured means (made monotone) joined
    in log labels, which give the answer (triangles, where the target is met); its fitted power law
    with a 95 % bootstrap band, dashed, to show how far the curve's shape is a choice."""
    names = arms(runs)
    colors = _colors(names)
    fig, ax = plt.subplots(figsize=(9, 5), layout="constrained")
    xs = np.array(sorted({_x(r) for r in runs}))
    grid = np.geomspace(xs.min() / 2, xs.max() * 4, 200)
    for arm in names:
        mine = [r for r in runs if r.arm == arm]
        ax.scatter(
            [_x(r) for r in mine],
            [r.test[METRIC] for r in mine],
            color=colors[arm],
            marker="o",
            s=18,
            alpha=0.45,
            label=f"{arm}: runs",
            facecolors=["none" if r.collapsed() else colors[arm] for r in mine],
        )
        measured = a.curves.measured.get(arm) if arm not in a.withheld else None
        if measured is None:
            continue
        ax.plot(
            measured.counts, measured.means, marker="s", ms=5, color=colors[arm], label=f"{arm}: measured"
        )
        law = a.curves.laws.get(arm)
        if law is not None:
            boot = np.array([b(grid) for b in a.curves.boot_laws[arm] if b is not None])
            ax.fill_between(
                grid, *np.percentile(boot, [2.5, 97.5], axis=0), color=colors[arm], alpha=0.12, lw=0
            )
            ax.plot(grid, law(grid), color=colors[arm], ls="--", lw=1, label=f"{arm}: power law (band: 95 %)")
        n = measured.labels_for(a.target) if a.target is not None else math.inf
        if math.isfinite(n):
            ax.plot([n], [a.target], marker="v", ms=10, color=colors[arm], ls="none")
            ax.annotate(
                f"{n:,.0f}",
                (n, a.target),
                textcoords="offset points",
                xytext=(0, 9),
                ha="center",
                fontsize=8,
                color=colors[arm],
            )
    if a.target is not None:
        ax.axhline(a.target, color="grey", ls=":", lw=1, label=f"target {METRIC_NAME} {a.target:.3f}")
    ax.axvspan(
        xs.max(), grid[-1], color="grey", alpha=0.07, lw=0, label="outside the labels run: extrapolation"
    )
    ax.axvspan(grid[0], xs.min(), color="grey", alpha=0.07, lw=0)
    at = labels_at(runs)
    _label_ticks(
        ax,
        {float(n.total): f"{n.total:,}\n{pct(f)}" for f, n in at.items() if n.total}
        or {x: f"{x:,.0f}" for x in xs},
    )
    ax.set(
        xlim=(grid[0], grid[-1]),
        xlabel="labelled images (log scale); percentage of the training labels below",
        ylabel=f"test {METRIC_NAME}",
    )
    ax.grid(alpha=0.3)
    legend_outside(fig, below=True, ncols=3)
    ax.set_title(f"Test {METRIC_NAME} against labelled images (hollow points: collapsed runs, left out)")
    return save_figure(fig, path)


def label_efficiency_figure(runs: list[Run], path: Path) -> Path:
    groups, names = by_cell(runs), arms(runs)
    fractions = sorted({r.fraction for r in runs})
    at = labels_at(runs)
    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(4 * len(METRICS), 4.4), sharey=True, layout="constrained"
    )
    for ax, metric in zip(axes, METRICS, strict=True):
        for arm in names:
            xs, est = [], []
            for f in fractions:
                rs = groups.get((arm, f), [])
                if rs:
                    xs.append(f)
                    est.append(estimate([r.test[metric] for r in rs]))
            if not xs:
                continue
            line = ax.plot(xs, [e.mean for e in est], marker="o", label=arm)[0]
            if all(e.n > 1 for e in est):
                ax.fill_between(
                    xs, [e.low for e in est], [e.high for e in est], color=line.get_color(), alpha=0.2
                )
        _label_ticks(ax, {f: f"{pct(f)}\n{at[f].total:,}" if at[f].total else pct(f) for f in fractions})
        ax.set(title=NAMES[metric], xlabel="share of training labels (labelled images)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test score (mean, 95 % interval band)")
    legend_outside(fig)
    fig.suptitle("Label efficiency: test metrics against the share of labels used")
    return save_figure(fig, path)


def curves_figure(runs: list[Run], path: Path) -> Path:
    fractions = sorted({r.fraction for r in runs})
    colors = _colors(arms(runs))
    fig, axes = plt.subplots(
        len(fractions), 2, figsize=(11, 3.2 * len(fractions)), squeeze=False, layout="constrained"
    )
    for row, f in enumerate(fractions):
        for r in (r for r in runs if r.fraction == f):
            epochs = [h["epoch"] for h in r.history]
            train = {"color": colors[r.arm], "alpha": 0.5, "ls": "--", "marker": "."}
            val = {
                "color": colors[r.arm],
                "alpha": 0.8,
                "marker": "o",
                "ms": 3,
                "label": f"{r.arm} seed {r.seed}",
            }
            for column, key, style in (
                (0, "train_loss", train),
                (0, "val_loss", val),
                (1, "val_accuracy", val),
            ):
                axes[row, column].plot(epochs, [h[key] for h in r.history], **style)
        axes[row, 0].set(
            title=f"{pct(f)} of the labels: loss (dashed train, solid validation)",
            xlabel="epoch",
            ylabel="loss",
        )
        axes[row, 1].set(
            title=f"{pct(f)} of the labels: validation accuracy",
            xlabel="epoch",
            ylabel="accuracy",
            ylim=(0, 1.02),
        )
        for ax in axes[row]:
            ax.grid(alpha=0.3)
    legend_outside(fig)
    return save_figure(fig, path)


def confidence_figures(runs: list[Run], folder: Path) -> list[tuple[Path, float]]:
    """The seed's box plots, per fraction, every arm, pooled over seeds (from predictions.csv)."""
    paths = []
    for f in sorted({r.fraction for r in runs}):
        groups: dict[str, dict[str, np.ndarray]] = {}
        labels: list[str] = []
        for arm in arms(runs):
            y, probs = [], []
            for r in (r for r in runs if r.fraction == f and r.arm == arm):
                with open(r.folder / "predictions.csv") as fh:
                    rows = list(csv.DictReader(fh))
                labels = [k[2:] for k in rows[0] if k.startswith("p_")]
                y += [labels.index(unescape(row["true_label"])) for row in rows]
                probs += [[float(row[f"p_{c}"]) for c in labels] for row in rows]
            if y:
                groups[arm] = {"true": np.array(y), "probs": np.array(probs)}
        if groups:
            paths.append(
                (
                    confidence_boxplot(
                        groups,
                        labels,
                        folder / f"confidence_f{f:g}.png",
                        f"Confidence on the test split at {pct(f)} of the labels (all seeds pooled)",
                    ),
                    f,
                )
            )
    return paths


def recon_error_figure(recon: dict[str, Any], path: Path, title: str = "MAE reconstruction error") -> Path:
    """Masked and visible errors by mask ratio, beside the trivial predictors' errors where recorded."""
    ratios = sorted(recon["by_mask_ratio"], key=float)
    rows = [recon["by_mask_ratio"][r] for r in ratios]
    x = [float(r) for r in ratios]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for key, marker, label, style in [
        ("masked_mse", "o", "MAE, masked patches", "-"),
        ("visible_mse", "s", "MAE, visible patches", "-"),
        ("visible_mean_mse", "^", "trivial: mean colour of the visible patches", ":"),
        ("neighbour_mse", "v", "trivial: nearest visible neighbour", ":"),
    ]:
        if all(key in row for row in rows):
            ax.plot(x, [row[key] for row in rows], marker=marker, ls=style, label=label)
    ax.axvline(recon["training_mask_ratio"], color="grey", ls="--", label="training mask ratio")
    ax.set(xlabel="mask ratio at evaluation", ylabel=f"MSE ({recon['space']})", title=title)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    legend_outside(fig, below=True, ncols=2)
    return save_figure(fig, path)
