"""The study report's robustness section: macro-F1 per shift and arm (mean, spread over seeds) and its drop.

It reads each finished run's ``robustness.json`` (written by ``leanmae.evaluation.robustness``) and
shows nothing for studies whose runs have none (older studies, or runs still being scored), so an
old study's report stays as it was. The CSV is long (one row per arm, label fraction and set) for
analysis; the HTML table is wide (one row per arm and fraction) for reading.
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from leanmae.evaluation.robustness import ROBUSTNESS_FILE
from leanmae.files import read_json, write_atomic
from leanmae.reporting.plots import legend_outside, save_figure
from leanmae.reporting.runs import Run, pct
from leanmae.reporting.tables import Table

CLEAN = "clean"


def _load(runs: list[Run]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """Each (arm, fraction)'s robustness results, from the runs that have a robustness file."""
    found: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        path = run.folder / ROBUSTNESS_FILE
        if path.exists():
            found[(run.arm, run.fraction)].append(read_json(path))
    return found


def _sets(results: list[dict[str, Any]]) -> list[str]:
    """Shift names in the benchmark's order, then ``external:FOLDER`` for each external set."""
    names = list(results[0]["shifts"])
    for result in results:
        names += [f"external:{k}" for k in result.get("external", {}) if f"external:{k}" not in names]
    return names


def _values(results: list[dict[str, Any]], name: str) -> tuple[list[float], list[float]]:
    """(macro-F1 per run, drop against the run's own unshifted score per run) for one set."""
    f1, drop = [], []
    for result in results:
        row = (
            result.get("external", {}).get(name.split(":", 1)[1])
            if name.startswith("external:")
            else result["shifts"].get(name)
        )
        if row is not None:
            f1.append(row["macro_f1"])
            drop.append(result["shifts"][CLEAN]["macro_f1"] - row["macro_f1"])
    return f1, drop


def _spread(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def robustness_tables(runs: list[Run]) -> tuple[Table, Table] | None:
    """(long table for results/robustness.csv, wide table for the report); None when no run has a file."""
    cells = _load(runs)
    if not cells:
        return None
    names = _sets([r for results in cells.values() for r in results])
    long_rows, wide_rows = [], []
    for (arm, fraction), results in sorted(
        cells.items(), key=lambda kv: (kv[0][1], kv[0][0] != "scratch", kv[0][0])
    ):
        wide = [pct(fraction), arm, len(results)]
        for name in names:
            f1, drop = _values(results, name)
            if not f1:
                wide.append("—")
                continue
            long_rows.append(
                [
                    fraction,
                    arm,
                    name,
                    len(f1),
                    f"{np.mean(f1):.4f}",
                    f"{_spread(f1):.4f}",
                    f"{np.mean(drop):.4f}",
                    f"{_spread(drop):.4f}",
                ]
            )
            cell = f"{np.mean(f1):.3f}" + (f" ± {_spread(f1):.3f}" if len(f1) > 1 else "")
            wide.append(cell if name == CLEAN else f"{cell} ({-np.mean(drop):+.3f})")
        wide_rows.append(wide)
    long = Table(
        "robustness",
        "Robustness: test macro-F1 per shift (mean, SD over seeds) and its drop against the unshifted images",
        ["fraction", "arm", "set", "runs", "macro_f1_mean", "macro_f1_sd", "drop_mean", "drop_sd"],
        long_rows,
    )
    wide_table = Table(
        "robustness_wide",
        "Robustness: test macro-F1 per shift, mean ± SD over seeds (in brackets: change against unshifted)",
        ["labels", "arm", "runs", *names],
        wide_rows,
    )
    return long, wide_table


def robustness_figure(runs: list[Run], path: Path) -> Path | None:
    """Macro-F1 per shift (x) and arm (lines, error bars: SD over seeds), one panel per label fraction."""
    cells = _load(runs)
    if not cells:
        return None
    fractions = sorted({f for _, f in cells})
    names = _sets([r for results in cells.values() for r in results])
    fig, axes = plt.subplots(
        1,
        len(fractions),
        figsize=(5.5 * len(fractions), 4.2),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, fraction in zip(axes[0], fractions, strict=True):
        for (arm, f), results in sorted(cells.items(), key=lambda kv: (kv[0][0] != "scratch", kv[0][0])):
            if f != fraction:
                continue
            points = [(i, _values(results, n)[0]) for i, n in enumerate(names)]
            xs = [i for i, v in points if v]
            ax.errorbar(
                xs,
                [np.mean(v) for _, v in points if v],
                yerr=[_spread(v) for _, v in points if v],
                marker="o",
                capsize=3,
                label=arm,
            )
        ax.set_xticks(
            range(len(names)), [n.replace("external:", "ext: ") for n in names], rotation=45, ha="right"
        )
        ax.set_title(f"{pct(fraction)} of the labels")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test macro-F1")
    legend_outside(fig)
    fig.suptitle("Robustness to stain, colour and framing shifts")
    return save_figure(fig, path)


def robustness_section(runs: list[Run], results: Path, image: Any) -> str:
    """The report's robustness section (and results/robustness.csv and .png); "" for runs without files.

    ``image(path, caption)`` embeds a figure the way the rest of the report does.
    """
    tables = robustness_tables(runs)
    if tables is None:
        return ""
    long, wide = tables
    write_atomic(results / f"{long.name}.csv", long.csv())
    figure = robustness_figure(runs, results / "robustness.png")
    scored = sum((run.folder / ROBUSTNESS_FILE).exists() for run in runs)
    benchmark = next(
        read_json(run.folder / ROBUSTNESS_FILE)["benchmark"]
        for run in runs
        if (run.folder / ROBUSTNESS_FILE).exists()
    )
    method = (
        f"{scored} of {len(runs)} finished runs scored on the test split under controlled shifts, applied "
        "to the images before the model's own decoding: hed-H, Tellez et al. 2019's stain perturbation at "
        "strength H (keyed per image); colour-transfer, Reinhard's transfer to the colour statistics of "
        f"{benchmark['colour_reference']['source']}; zoom-Zx, the centre 1/Z of the image enlarged back. "
        "The drop is against the same run's unshifted score (see docs/robustness.md)."
    )
    return (
        "<h2>Robustness to other labs</h2>"
        + f"<p class='meta'>{html.escape(method)}</p>"
        + wide.html()
        + (
            image(figure, "Test macro-F1 under each shift, per arm (error bars: SD over seeds)")
            if figure
            else ""
        )
    )
