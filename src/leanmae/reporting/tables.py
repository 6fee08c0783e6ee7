"""The study's tables (CSV, Markdown, HTML): the seed's table, paired gains, trust, per class, every run,
times."""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from leanmae.config import candidate_folders
from leanmae.evaluation.stats import Estimate, estimate, paired
from leanmae.files import run_info
from leanmae.reporting.runs import (
    BASELINE,
    Run,
    arms,
    by_cell,
    label_text,
    labels_at,
    pct,
)
from leanmae.safe_csv import csv_text, markdown_text, unescape

METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
NAMES = {
    "accuracy": "Accuracy",
    "macro_precision": "Precision (macro)",
    "macro_recall": "Recall (macro)",
    "macro_f1": "F1 (macro)",
    "balanced_accuracy": "Balanced accuracy",
}


@dataclass
class Table:
    name: str
    title: str
    headers: list[str]
    rows: list[list[Any]]

    def csv(self) -> str:
        return csv_text(self.headers, self.rows)  # formula-like cells escaped for spreadsheets

    def markdown(self) -> str:
        lines = [
            f"### {markdown_text(self.title)}",
            "",
            "| " + " | ".join(markdown_text(h) for h in self.headers) + " |",
            "|" + "---|" * len(self.headers),
        ]
        lines += ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in self.rows
        )
        return f"<h3>{html.escape(self.title)}</h3>" + scrolling(
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


def scrolling(table: str) -> str:
    """A table inside a box that scrolls sideways, so that a wide one never widens the page (and every
    figure and paragraph with it); the report's CSS gives the box its scroll bar."""
    return f"<div class='scroll'>{table}</div>"


def per_metric(summary: Table) -> list[Table]:
    """The summary as one table per metric, macro-F1 first (the metric of the answer): every metric side
    by side is four times wider than a page."""
    tables = []
    for metric in sorted(METRICS, key=lambda m: m != "macro_f1"):
        prefix = f"{NAMES[metric]}: "
        keep = [0] + [i for i, h in enumerate(summary.headers) if h.startswith(prefix)]
        tables.append(
            Table(
                f"{summary.name}_{metric}",
                f"{NAMES[metric]}. {summary.title}",
                [summary.headers[i].removeprefix(prefix) for i in keep],
                [[row[i] for i in keep] for row in summary.rows],
            )
        )
    return tables


def gain(runs: list[Run], metric: str, fraction: float, arm: str, base: str = BASELINE) -> Estimate:
    """Paired (same seed, and the same labelled subset unless ``arm`` chose its own labels) difference
    ``arm - base`` of a test metric."""
    groups = by_cell(runs)
    a = {r.seed: r.test[metric] for r in groups.get((arm, fraction), [])}
    b = {r.seed: r.test[metric] for r in groups.get((base, fraction), [])}
    return paired(a, b)


def _pairing(runs: list[Run]) -> str:
    """What a paired difference holds fixed: the seed, and the labelled subset unless an arm chose its own
    labels (the same number of them, but other images: its gain includes the choice)."""
    chose = [a for a in arms(runs) if any(r.selection != "stratified" for r in runs if r.arm == a)]
    if not chose:
        return "same seed, same labelled subset"
    return f"same seed and number of labels; the same labelled subset except {', '.join(chose)}, " + (
        "which chose its own" if len(chose) == 1 else "which chose their own"
    )


def gain_name(arm: str) -> str:
    return "MAE gain" if arm == "mae" else f"{arm} gain"


def pretrained(runs: list[Run]) -> list[str]:
    """The arms compared with scratch (every arm but scratch, when scratch was run)."""
    names = arms(runs)
    return [a for a in names if a != BASELINE] if BASELINE in names else []


def count_range(counts: list[int]) -> str:
    """``12``, or ``12 to 60`` where the runs differ; empty where none is known."""
    low, high = (min(counts), max(counts)) if counts else (None, None)
    return "" if low is None else f"{low}" if low == high else f"{low} to {high}"


def _validation(run: Run) -> str:
    """How a run's epoch and refer threshold were chosen: on an honest draw of labels (counted in its
    budget) or on the whole validation split (not counted)."""
    if run.labels.val_mode == "honest":
        return f"honest ({run.val_images})"
    return f"full split ({run.val_images})" if run.val_images else "full split"


def labels_table(runs: list[Run]) -> Table:
    """Labels per fraction as counts: in total and per class, and how the epoch was chosen. Arms that draw
    the same stratified labels share a row; an arm that chose its own labels (``classifier.selection``)
    has a row of its own, a class's count given as a range where its seeds chose differently."""
    classes = sorted({c for r in runs for c in r.labels.per_class()})
    groups = by_cell(runs)
    rows: dict[tuple[float, tuple[tuple[str, str], ...]], tuple[list[str], list[Run]]] = {}
    for arm in arms(runs):
        for f in sorted({r.fraction for r in runs}):
            cell = groups.get((arm, f), [])
            drawn = tuple(sorted({(str(sorted(r.labels.per_class().items())), _validation(r)) for r in cell}))
            if cell:
                names, same = rows.setdefault((f, drawn), ([], []))
                names.append(arm)
                same.extend(cell)
    several = len(rows) > len({f for f, _ in rows})  # some fraction's arms did not all share their labels
    table = []
    for (f, _), (names, same) in sorted(rows.items(), key=lambda item: item[0][0]):
        counts = [[r.labels.per_class().get(c, 0) for r in same] for c in classes]
        table.append(
            [pct(f), *([", ".join(names)] if several else []), count_range([r.labels.total for r in same])]
            + [count_range(c) for c in counts]
            + [" / ".join(dict.fromkeys(_validation(r) for r in same))]
        )
    return Table(
        "labels",
        "Labels used per fraction (training labels, plus validation labels where they were a "
        "fraction too; 'full split': the epoch was chosen on the whole validation split, not counted)"
        + ("; arms whose labels differ (a label choice of their own) have their own rows" if several else ""),
        ["labels", *(["arms"] if several else []), "labelled images", *classes, "validation"],
        table,
    )


def tables(runs: list[Run]) -> list[Table]:
    groups, names, others = by_cell(runs), arms(runs), pretrained(runs)
    fractions = sorted({r.fraction for r in runs})
    at = labels_at(runs)
    classes = list(runs[0].test["per_class"]) if runs else []
    main_rows, paired_rows, class_rows, conf_rows, trust_rows, run_rows = [], [], [], [], [], []
    for f in fractions:
        row = [label_text(at.get(f), f)]
        for metric in METRICS:
            row += [estimate([r.test[metric] for r in groups.get((arm, f), [])]).text() for arm in names]
            row += [gain(runs, metric, f, arm).text() for arm in others]
        main_rows.append(row)
        for arm in others:
            for metric in (*METRICS, "balanced_accuracy"):
                g = gain(runs, metric, f, arm)
                if g.n == 0:  # no seed of this fraction has both arms (yet, or ever: a run not made)
                    continue
                paired_rows.append(
                    [
                        pct(f),
                        f"{arm} - scratch",
                        NAMES[metric],
                        f"{g.mean:+.4f}",
                        "" if g.n < 2 else f"{g.low:+.4f}",
                        "" if g.n < 2 else f"{g.high:+.4f}",
                        g.n,
                        "yes" if g.excludes_zero() else "no",
                    ]
                )
        for arm in names:
            rs = groups.get((arm, f), [])
            if not rs:
                continue
            class_rows.append(
                [pct(f), arm] + [estimate([r.test["per_class"][c]["f1"] for r in rs]).text() for c in classes]
            )
            for outcome in ("correct", "wrong"):
                medians = [
                    [r.test["confidence"][c][outcome]["median"] for r in rs] for c in ["all", *classes]
                ]
                conf_rows.append(
                    [pct(f), arm, outcome]
                    + [estimate([m for m in ms if m is not None]).text() for ms in medians]
                )
            if "calibration" in rs[0].metrics:
                cells = [
                    [r.metrics["calibration"]["before"]["ece"] for r in rs],
                    [r.metrics["calibration"]["after"]["ece"] for r in rs],
                    [r.metrics["refer"]["aurc"] for r in rs],
                    [r.metrics["refer"]["test"]["coverage"] for r in rs],
                    [r.metrics["refer"]["test"]["accuracy_kept"] for r in rs],
                    [r.metrics.get("ood", {}).get("auroc_msp") for r in rs],
                    [r.metrics.get("ood", {}).get("auroc_energy") for r in rs],
                ]
                shown = [r.val_images for r in rs if r.val_images is not None]
                trust_rows.append(
                    [pct(f), arm]
                    + [estimate([v for v in c if v is not None]).text() for c in cells]
                    + [count_range(shown)]
                )
    for r in runs:
        run_rows.append(
            [
                r.arm,
                pct(r.fraction),
                r.seed,
                r.labels.total or r.metrics["train_images"],
                _validation(r),
                *(f"{r.test[m]:.4f}" for m in (*METRICS, "balanced_accuracy")),
                r.metrics.get("selected_epoch"),
                "copy" if r.info.get("copy_of") else f"{r.metrics.get('wall_seconds', 0):.0f}",
                "yes" if r.collapsed() else "",
            ]
        )
    main_headers = ["labels"] + [
        f"{NAMES[m]}: {name}" for m in METRICS for name in [*names, *map(gain_name, others)]
    ]
    interval = "95 % interval: t over seeds on the logit scale, inside the metric's range"
    return [
        Table(
            "summary",
            f"Test metrics per label fraction: mean ± sd over seeds [{interval}]; gains paired by seed",
            main_headers,
            main_rows,
        ),
        Table(
            "paired",
            f"Paired comparison with scratch ({_pairing(runs)}): mean difference and "
            "95 % interval (logit-scale t on [-1, 1])",
            [
                "labels",
                "comparison",
                "metric",
                "mean difference",
                "CI low",
                "CI high",
                "seeds",
                "CI excludes 0",
            ],
            paired_rows,
        ),
        Table(
            "trust",
            "Confidence you can trust (test split): ECE before / after temperature scaling, AURC, "
            "coverage and accuracy at the refer-to-expert threshold, OOD AUROC",
            [
                "labels",
                "arm",
                "ECE before",
                "ECE after",
                "AURC",
                "coverage at target",
                "accuracy kept",
                "OOD AUROC (MSP)",
                "OOD AUROC (energy)",
                "threshold chosen on (val images)",
            ],
            trust_rows,
        ),
        labels_table(runs),
        Table(
            "per_class_f1",
            "Per-class test F1: mean ± sd [95 % interval]",
            ["labels", "arm", *classes],
            class_rows,
        ),
        Table(
            "confidence",
            "Median confidence (probability of the predicted class) on the test split, per true class",
            ["labels", "arm", "prediction", "all", *classes],
            conf_rows,
        ),
        Table(
            "runs",
            "Every finished run ('copy': the run at the search's seed, a copy of its chosen candidate)",
            [
                "arm",
                "labels",
                "seed",
                "labelled images",
                "validation",
                *(NAMES[m] for m in (*METRICS, "balanced_accuracy")),
                "selected epoch",
                "seconds",
                "collapsed",
            ],
            run_rows,
        ),
    ]


def times_table(runs: list[Run], *pretrains: Path) -> Table:
    """Wall-clock time per arm x fraction, each MAE pretraining, the recipe candidates, and the study's
    elapsed time.

    A run resumed after an interruption records only its last segment ("resumed" counts them), so
    its time is a lower bound; the elapsed time runs from the first start to the last finish (a
    run's start plus its seconds, so a resumed run's finish is a lower bound too) and includes any
    interruption. An MAE given to the study (``--mae``, outside its folder) was pretrained before it,
    perhaps on another device: its row says so, and neither the total nor the elapsed time counts it.
    The candidates of ``--search`` (often most of a study's time) are counted with the runs.
    """
    study = runs[0].folder.parent.parent.resolve()  # runs/<name>
    pretrained = [(folder, run_info(folder)) for folder in pretrains]
    pretrained = [(folder, i) for folder, i in pretrained if i.get("status") == "finished"]
    rows: list[list[Any]] = []
    for folder, info in pretrained:
        name = "MAE pretraining" if len(pretrained) == 1 else f"MAE pretraining ({folder.name})"
        if not folder.resolve().is_relative_to(study):
            name += f", given: run before the study, on {info.get('device', 'an unrecorded device')}"
        rows.append(_time_row(name, "", [info]))
    own = [i for folder, i in pretrained if folder.resolve().is_relative_to(study)]
    # as metrics say; a copy of its search's candidate (``copy_of``) trained nothing: counted there
    grid = {
        r.folder: {**r.info, "wall_seconds": r.metrics["wall_seconds"]}
        for r in runs
        if not r.info.get("copy_of")
    }
    candidates = [run_info(folder) for folder in candidate_folders(study)]
    candidates = [i for i in candidates if i.get("status") == "finished"]
    order = arms(runs)
    cells = by_cell(runs)
    for fraction in sorted({f for _, f in cells} | {i["config"]["fraction"] for i in candidates}):
        tried = [i for i in candidates if i["config"]["fraction"] == fraction]
        if tried:  # the search comes first at each fraction
            rows.append(_time_row("recipe candidates (search/)", pct(fraction), tried))
        for arm in sorted((a for a, f in cells if f == fraction), key=order.index):
            trained = [grid[r.folder] for r in cells[arm, fraction] if r.folder in grid]
            if trained:
                rows.append(_time_row(arm, pct(fraction), trained))
    counted = [*own, *candidates, *grid.values()]
    total = _time_row("all runs", "", counted)
    total[4] = ""  # a mean over runs of every kind says nothing
    rows.append(total)
    timed = [i for i in counted if i.get("started")]
    if timed:
        starts = [datetime.strptime(i["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp() for i in timed]
        # a start plus its seconds, not file times: a git checkout resets them
        ends = [start + i.get("wall_seconds", 0) for start, i in zip(starts, timed, strict=True)]
        rows.append(
            ["elapsed, first start to last finish", "", "", "", "", f"{(max(ends) - min(starts)) / 60:.1f}"]
        )
    return Table(
        "times",
        "Run times in minutes (one process per run; resumed runs count their last segment only; an MAE given "
        "to the study, pretrained before it, counts in neither the total nor the elapsed time; a run at the "
        "search's seed is a copy of its chosen candidate, counted there)",
        ["run", "labels", "runs", "resumed", "mean", "total"],
        rows,
    )


def _time_row(name: str, labels: str, infos: list[dict[str, Any]]) -> list[Any]:
    """A row of the times table: how many runs, how many resumed, mean and total minutes."""
    minutes = [i["wall_seconds"] / 60 for i in infos]
    resumed = sum(1 for i in infos if i.get("resumed_from_epoch"))
    return [name, labels, len(infos), resumed, f"{np.mean(minutes):.1f}", f"{np.sum(minutes):.1f}"]


def search_table(search_csv: Path, beyond: str | None = None) -> Table | None:
    """What recipe search each arm got (``study --search``, and ``beyond``: its --search-beyond): the same
    candidates at every fraction, and the one its label-honest val draw chose; None when the study searched
    nothing."""
    if not search_csv.exists():
        return None
    with open(search_csv, newline="") as f:
        found = [{k: unescape(v) for k, v in row.items()} for row in csv.DictReader(f)]
    cells: dict[tuple[str, float], list[dict[str, str]]] = {}
    for row in found:
        cells.setdefault((row["arm"], float(row["fraction"])), []).append(row)
    rows = []
    for (arm, fraction), candidates in sorted(cells.items()):
        best = next(c for c in candidates if c["chosen"] == "True")
        scores = [float(c["val_macro_f1"]) for c in candidates if c["status"] == "finished"]
        ran = [c["status"] for c in candidates if c["status"] != "not needed"]
        lost = [status for status in ran if status != "finished"]  # diverged (earlier studies: failed)
        rows.append(
            [
                arm,
                pct(fraction),
                f"{len(ran)}" + (f" ({len(lost)} {lost[0]})" if lost else ""),
                best["settings"],
                f"{float(best['val_macro_f1']):.3f}",
                f"{float(best['val_loss']):.3f}",
                f"{min(scores):.3f}–{max(scores):.3f}",
            ]
        )
    return Table(
        "search",
        "Recipe search: every arm tried the same candidates at every fraction, each once at the first seed, "
        "and kept the one its own label-honest val draw scored best (macro-F1, then val loss); the other "
        "seeds use that recipe, chosen on the first seed's draw of the same size, and the seed intervals "
        "do not include the search's own variation"
        + (
            "; where the best took the last value of the grid's last entry (its edge), one more candidate "
            f"ran with the best's other settings and {beyond} (the same rule for every arm)"
            if beyond
            else ""
        ),
        [
            "arm",
            "labels",
            "candidates",
            "chosen",
            "val macro-F1",
            "val loss",
            "val macro-F1 of all candidates",
        ],
        rows,
    )
