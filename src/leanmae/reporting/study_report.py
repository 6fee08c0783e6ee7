"""Tables, figures and report.html of a study, computed from the finished runs in its folder.

Nothing here is written by hand: every number and every sentence of the findings comes from the
runs' metrics.json files, so ``leanmae report DIR`` can rebuild the report at any time, also from
a study that is still running (it reports what has finished and says how much that is).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from leanmae.evaluation.stats import Estimate, estimate, paired
from leanmae.reporting.plots import confidence_boxplot, save_figure
from leanmae.reporting.safe_csv import csv_text, unescape
from leanmae.training.checkpoint import write_atomic

METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
NAMES = {"accuracy": "Accuracy", "macro_precision": "Precision (macro)", "macro_recall": "Recall (macro)", "macro_f1": "F1 (macro)", "balanced_accuracy": "Balanced accuracy"}


@dataclass
class Run:
    """One finished fine-tuning run of the study."""

    folder: Path
    arm: str
    fraction: float
    seed: int
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    info: dict[str, Any]  # its run.json

    @property
    def test(self) -> dict[str, Any]:
        return self.metrics["test"]


def _info(folder: Path) -> dict[str, Any]:
    path = folder / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_runs(study: Path) -> list[Run]:
    """Finished runs (run.json status "finished"), sorted by arm, fraction, seed."""
    runs = []
    for folder in sorted((study / "runs").glob("*_f*_s*")):
        info, metrics_file = _info(folder), folder / "metrics.json"
        if not metrics_file.exists() or info.get("status") != "finished":
            continue
        metrics = json.loads(metrics_file.read_text())
        with open(folder / "history.csv") as f:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        arm = folder.name.rsplit("_f", 1)[0]
        runs.append(Run(folder, arm, float(metrics["fraction"]), int(metrics["seed"]), metrics, history, info))
    return sorted(runs, key=lambda r: (r.arm, r.fraction, r.seed))


def _by(runs: list[Run]) -> dict[tuple[str, float], list[Run]]:
    groups: dict[tuple[str, float], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.arm, run.fraction)].append(run)
    return groups


def _arms(runs: list[Run]) -> list[str]:
    order = {"scratch": 0, "mae": 1, "mae-linear": 2}
    return sorted({r.arm for r in runs}, key=lambda a: (order.get(a, 9), a))


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def gain(runs: list[Run], metric: str, fraction: float, arm: str = "mae", base: str = "scratch") -> Estimate:
    """Paired (same seed, same labelled subset) difference ``arm - base`` of a test metric."""
    groups = _by(runs)
    a = {r.seed: r.test[metric] for r in groups.get((arm, fraction), [])}
    b = {r.seed: r.test[metric] for r in groups.get((base, fraction), [])}
    return paired(a, b)


def wrong_confidence(run: Run) -> float | None:
    return run.test["confidence"]["all"]["wrong"]["median"]


# ----------------------------------------------------------------------------- tables


@dataclass
class Table:
    name: str
    title: str
    headers: list[str]
    rows: list[list[Any]]

    def csv(self) -> str:
        return csv_text(self.headers, self.rows)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |", "|" + "---|" * len(self.headers)]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in self.rows)
        return f"<h3>{html.escape(self.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def tables(runs: list[Run]) -> list[Table]:
    groups, arms = _by(runs), _arms(runs)
    fractions = sorted({r.fraction for r in runs})
    labels = list(runs[0].test["per_class"]) if runs else []
    main_rows, paired_rows, class_rows, conf_rows, run_rows = [], [], [], [], []
    for f in fractions:
        row = [_pct(f)]
        for metric in METRICS:
            for arm in arms:
                row.append(estimate([r.test[metric] for r in groups.get((arm, f), [])]).text())
            if "mae" in arms and "scratch" in arms:
                row.append(gain(runs, metric, f).text())
        main_rows.append(row)
        for arm in arms:
            if arm == "scratch" or "scratch" not in arms:
                continue
            for metric in (*METRICS, "balanced_accuracy"):
                g = gain(runs, metric, f, arm)
                paired_rows.append([_pct(f), f"{arm} - scratch", NAMES[metric], f"{g.mean:+.4f}", "" if g.n < 2 else f"{g.low:+.4f}", "" if g.n < 2 else f"{g.high:+.4f}", g.n, "yes" if g.excludes_zero() else "no"])
        for arm in arms:
            rs = groups.get((arm, f), [])
            if not rs:
                continue
            class_rows.append([_pct(f), arm] + [estimate([r.test["per_class"][c]["f1"] for r in rs]).text() for c in labels])
            for outcome in ("correct", "wrong"):
                medians = [[r.test["confidence"][c][outcome]["median"] for r in rs] for c in ["all", *labels]]
                conf_rows.append([_pct(f), arm, outcome] + [estimate([m for m in ms if m is not None]).text() for ms in medians])
    trust_rows = []
    for f in fractions:
        for arm in arms:
            rs = groups.get((arm, f), [])
            if not rs or "calibration" not in rs[0].metrics:
                continue
            cells = [
                [r.metrics["calibration"]["before"]["ece"] for r in rs],
                [r.metrics["calibration"]["after"]["ece"] for r in rs],
                [r.metrics["refer"]["aurc"] for r in rs],
                [r.metrics["refer"]["test"]["coverage"] for r in rs],
                [r.metrics["refer"]["test"]["accuracy_kept"] for r in rs],
                [r.metrics.get("ood", {}).get("auroc_msp") for r in rs],
                [r.metrics.get("ood", {}).get("auroc_energy") for r in rs],
            ]
            trust_rows.append([_pct(f), arm] + [estimate([v for v in c if v is not None]).text() for c in cells])
    for r in runs:
        run_rows.append([r.arm, _pct(r.fraction), r.seed, r.metrics["train_images"], *(f"{r.test[m]:.4f}" for m in (*METRICS, "balanced_accuracy")), r.metrics.get("selected_epoch"), f"{r.metrics.get('wall_seconds', 0):.0f}"])
    main_headers = ["labels"] + [f"{NAMES[m]}: {arm}" for m in METRICS for arm in arms + (["MAE gain"] if "mae" in arms and "scratch" in arms else [])]
    return [
        Table("summary", "Test metrics per label fraction: mean ± sd over seeds [95 % CI]; MAE gain paired by seed", main_headers, main_rows),
        Table("paired", "Paired comparison with scratch (same seed, same labelled subset): mean difference and 95 % CI", ["labels", "comparison", "metric", "mean difference", "CI low", "CI high", "seeds", "CI excludes 0"], paired_rows),
        Table(
            "trust",
            "Confidence you can trust (test split): ECE before / after temperature scaling, AURC, coverage and accuracy at the refer-to-expert threshold, OOD AUROC",
            ["labels", "arm", "ECE before", "ECE after", "AURC", "coverage at target", "accuracy kept", "OOD AUROC (MSP)", "OOD AUROC (energy)"],
            trust_rows,
        ),
        Table("per_class_f1", "Per-class test F1: mean ± sd [95 % CI]", ["labels", "arm", *labels], class_rows),
        Table("confidence", "Median confidence (probability of the predicted class) on the test split, per true class", ["labels", "arm", "prediction", "all", *labels], conf_rows),
        Table("runs", "Every finished run", ["arm", "labels", "seed", "train images", *(NAMES[m] for m in (*METRICS, "balanced_accuracy")), "selected epoch", "seconds"], run_rows),
    ]


def times_table(runs: list[Run], pretrain: Path) -> Table:
    """Wall-clock time per arm x fraction, the MAE pretraining, and the study's elapsed time.

    A run resumed after an interruption records only its last segment ("resumed" counts them), so
    its time is a lower bound; the elapsed time runs from the first start to the last finish and
    includes any interruption.
    """
    rows: list[list[Any]] = []
    pre = _info(pretrain)
    pre_minutes = pre["wall_seconds"] / 60 if pre.get("status") == "finished" else None
    if pre_minutes is not None:
        rows.append(["MAE pretraining", "", 1, 1 if pre.get("resumed_from_epoch") else 0, f"{pre_minutes:.1f}", f"{pre_minutes:.1f}"])
    arms = _arms(runs)
    for (arm, fraction), rs in sorted(_by(runs).items(), key=lambda kv: (kv[0][1], arms.index(kv[0][0]))):
        minutes = [r.metrics["wall_seconds"] / 60 for r in rs]
        resumed = sum(1 for r in rs if r.info.get("resumed_from_epoch"))
        rows.append([arm, _pct(fraction), len(rs), resumed, f"{np.mean(minutes):.1f}", f"{np.sum(minutes):.1f}"])
    total = (pre_minutes or 0.0) + sum(r.metrics["wall_seconds"] / 60 for r in runs)
    resumed_all = sum(1 for info in [pre if pre_minutes is not None else {}, *(r.info for r in runs)] if info.get("resumed_from_epoch"))
    rows.append(["all runs", "", len(runs) + (pre_minutes is not None), resumed_all, "", f"{total:.1f}"])
    timed = [(folder, info) for folder, info in [(pretrain, pre), *((r.folder, r.info) for r in runs)] if info.get("started")]
    if timed:
        starts = [datetime.strptime(info["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp() for _, info in timed]
        ends = [(folder / "run.json").stat().st_mtime for folder, _ in timed]
        rows.append(["elapsed, first start to last finish", "", "", "", "", f"{(max(ends) - min(starts)) / 60:.1f}"])
    return Table("times", "Run times in minutes (one process per run; resumed runs count their last segment only)", ["run", "labels", "runs", "resumed", "mean", "total"], rows)


# ----------------------------------------------------------------------------- findings


def findings(runs: list[Run]) -> list[str]:
    """Plain-language statements computed from the numbers."""
    if not runs:
        return ["No fine-tuning run has finished yet."]
    groups, arms = _by(runs), _arms(runs)
    fractions = sorted({r.fraction for r in runs})
    lines = []
    if "mae" in arms and "scratch" in arms:
        for f in fractions:
            g = gain(runs, "macro_f1", f)
            if g.n == 0:
                continue
            if g.n == 1:
                lines.append(f"At {_pct(f)} of the labels, MAE minus scratch macro-F1 is {g.mean:+.3f} from one seed: no interval, so it cannot be told from noise.")
            elif g.excludes_zero():
                verb = "adds" if g.mean > 0 else "costs"
                lines.append(f"At {_pct(f)} of the labels, MAE initialisation {verb} {abs(g.mean):.3f} macro-F1 (95 % CI {g.low:+.3f} to {g.high:+.3f}, {g.n} seeds).")
            else:
                lines.append(f"At {_pct(f)} of the labels, the macro-F1 difference MAE minus scratch ({g.mean:+.3f}, 95 % CI {g.low:+.3f} to {g.high:+.3f}, {g.n} seeds) is within noise.")
        full = groups.get(("mae", max(fractions)), [])
        if full and max(fractions) == 1.0:
            top = np.mean([r.test["macro_f1"] for r in full])
            for f in fractions[:-1]:
                part = groups.get(("mae", f), [])
                if part and top > 0:
                    lines.append(f"With MAE initialisation, {_pct(f)} of the labels reach {np.mean([r.test['macro_f1'] for r in part]) / top:.0%} of the macro-F1 obtained with all labels.")
        for f in fractions:
            a = {r.seed: wrong_confidence(r) for r in groups.get(("mae", f), []) if wrong_confidence(r) is not None}
            b = {r.seed: wrong_confidence(r) for r in groups.get(("scratch", f), []) if wrong_confidence(r) is not None}
            d = paired(a, b)
            if d.n == 0:
                continue
            direction = "more" if d.mean > 0 else "less"
            certainty = "beyond the interval" if d.excludes_zero() else ("within noise" if d.n > 1 else "one seed, no interval")
            lines.append(
                f"At {_pct(f)} of the labels, wrong predictions of MAE-initialised models are {direction} confident than from scratch: "
                f"median confidence {np.mean(list(a.values())):.2f} vs {np.mean(list(b.values())):.2f} ({d.mean:+.2f}, {certainty})."
            )
    top = max(fractions)
    for arm in arms:
        rs = [r for r in groups.get((arm, top), []) if "calibration" in r.metrics]
        if rs:
            before = estimate([r.metrics["calibration"]["before"]["ece"] for r in rs])
            after = estimate([r.metrics["calibration"]["after"]["ece"] for r in rs])
            coverage = estimate([r.metrics["refer"]["test"]["coverage"] for r in rs])
            target = rs[0].metrics["refer"]["target_accuracy"]
            lines.append(
                f"{arm} at {_pct(top)} of the labels: expected calibration error {before.mean:.3f} before and {after.mean:.3f} after temperature scaling; "
                f"referring predictions under the validation-chosen threshold keeps {coverage.mean:.0%} of test images for a {target:.0%} accuracy target."
            )
    for arm in arms:
        for f in fractions:
            rs = groups.get((arm, f), [])
            collapsed = [r.seed for r in rs if sum(1 for c in r.test["per_class"].values() if c["recall"] > 0) <= 1]
            if collapsed:
                lines.append(f"Warning: {arm} at {_pct(f)} collapsed to predicting a single class for seed(s) {collapsed}.")
    return lines


# ----------------------------------------------------------------------------- figures


def label_efficiency_figure(runs: list[Run], path: Path) -> Path:
    groups, arms = _by(runs), _arms(runs)
    fractions = sorted({r.fraction for r in runs})
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharey=True)
    for ax, metric in zip(axes, METRICS):
        for arm in arms:
            xs, est = [], []
            for f in fractions:
                rs = groups.get((arm, f), [])
                if rs:
                    xs.append(f)
                    est.append(estimate([r.test[metric] for r in rs]))
            if not xs:
                continue
            means = [e.mean for e in est]
            line = ax.plot(xs, means, marker="o", label=arm)[0]
            if all(e.n > 1 for e in est):
                ax.fill_between(xs, [e.low for e in est], [e.high for e in est], color=line.get_color(), alpha=0.2)
        ax.set_xscale("log")
        ax.set_xticks(fractions, [_pct(f) for f in fractions])
        ax.set(title=NAMES[metric], xlabel="share of training labels (log scale)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test score (mean, 95 % CI band)")
    axes[0].legend()
    fig.suptitle("Label efficiency: test metrics against the share of labels used")
    return save_figure(fig, path)


def curves_figure(runs: list[Run], path: Path) -> Path:
    fractions = sorted({r.fraction for r in runs})
    arms = _arms(runs)
    colors = dict(zip(arms, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, axes = plt.subplots(len(fractions), 2, figsize=(11, 3 * len(fractions)), squeeze=False)
    for row, f in enumerate(fractions):
        for r in (r for r in runs if r.fraction == f):
            epochs = [h["epoch"] for h in r.history]
            axes[row, 0].plot(epochs, [h["train_loss"] for h in r.history], color=colors[r.arm], alpha=0.5, ls="--")
            axes[row, 0].plot(epochs, [h["val_loss"] for h in r.history], color=colors[r.arm], alpha=0.8, label=f"{r.arm} seed {r.seed}")
            axes[row, 1].plot(epochs, [h["val_accuracy"] for h in r.history], color=colors[r.arm], alpha=0.8, label=f"{r.arm} seed {r.seed}")
        axes[row, 0].set(title=f"{_pct(f)} of labels: loss (dashed train, solid validation)", xlabel="epoch", ylabel="loss")
        axes[row, 1].set(title=f"{_pct(f)} of labels: validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
        for ax in axes[row]:
            ax.grid(alpha=0.3)
        axes[row, 1].legend(fontsize=7)
    return save_figure(fig, path)


def confidence_figures(runs: list[Run], folder: Path) -> list[Path]:
    """The seed's box plots, per fraction, both arms, pooled over seeds (from predictions.csv)."""
    paths = []
    for f in sorted({r.fraction for r in runs}):
        groups: dict[str, dict[str, np.ndarray]] = {}
        labels: list[str] = []
        for arm in _arms(runs):
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
            paths.append(confidence_boxplot(groups, labels, folder / f"confidence_f{f:g}.png", f"Confidence on the test split at {_pct(f)} of labels (all seeds pooled)"))
    return paths


def recon_error_figure(recon: dict[str, Any], path: Path) -> Path:
    ratios = sorted(recon["by_mask_ratio"], key=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([float(r) for r in ratios], [recon["by_mask_ratio"][r]["masked_mse"] for r in ratios], marker="o", label="masked patches")
    ax.plot([float(r) for r in ratios], [recon["by_mask_ratio"][r]["visible_mse"] for r in ratios], marker="s", label="visible patches")
    ax.axvline(recon["training_mask_ratio"], color="grey", ls=":", label="training mask ratio")
    ax.set(xlabel="mask ratio at evaluation", ylabel=f"MSE ({recon['space']})", title="MAE reconstruction error: masked vs visible")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- report


def _img(path: Path, caption: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}
th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5em 0}figcaption{color:#555;font-size:13px}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.note{color:#a33}"""


def write_report(study: Path) -> Path:
    """Write results/ (tables and figures) and report.html for the study in ``study``."""
    study = Path(study)
    results = study / "results"
    results.mkdir(parents=True, exist_ok=True)
    runs = load_runs(study)
    settings = json.loads((study / "study.json").read_text()) if (study / "study.json").exists() else {}
    pretrain = Path(settings.get("mae") or study / "pretrain")
    expected = len(settings.get("fractions", [])) * len(settings.get("arms", [])) * len(settings.get("seeds", [])) or len(runs)
    all_tables = tables(runs) if runs else []
    for table in all_tables:
        write_atomic(results / f"{table.name}.csv", table.csv())
    write_atomic(results / "tables.md", "\n".join(t.markdown() for t in all_tables) or "No finished runs yet.\n")
    figures: list[tuple[Path, str]] = []
    if runs:
        figures.append((label_efficiency_figure(runs, results / "label_efficiency.png"), "Label-efficiency curves (log x axis; bands: 95 % CI over seeds)"))
        figures.append((curves_figure(runs, results / "training_curves.png"), "Training curves of every run"))
        figures += [(p, f"Confidence box plots, correct vs wrong, per class ({p.stem.split('_f')[-1]} of labels)") for p in confidence_figures(runs, results)]
    mae_figures = []
    if (pretrain / "recon_metrics.json").exists():
        recon = json.loads((pretrain / "recon_metrics.json").read_text())
        mae_figures = [
            (pretrain / "loss.png", "MAE pretraining loss"),
            (pretrain / "reconstructions.png", "MAE reconstructions of held-out images"),
            (recon_error_figure(recon, results / "mae_recon_errors.png"), "MAE reconstruction error on masked and visible patches by mask ratio"),
        ]
    text = findings(runs)
    write_atomic(results / "findings.md", "\n".join(f"- {line}" for line in text) + "\n")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>leanmae study report</title><style>{CSS}</style></head><body>"]
    parts.append("<h1>Label-efficiency study: does MAE pretraining cut the labels needed?</h1>")
    parts.append(f"<p>{len(runs)} of {expected} fine-tuning runs finished.</p>")
    if len(runs) < expected:
        parts.append("<p class='note'>The study is not complete: the numbers below cover only the finished runs.</p>")
    parts.append("<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in text) + "</ul>")
    for table in all_tables[:3]:
        parts.append(table.html())
    if runs:
        times = times_table(runs, pretrain)
        write_atomic(results / "times.csv", times.csv())
        parts.append(times.html())
    parts.append("<h2>Figures</h2>" + "".join(_img(p, c) for p, c in figures))
    for table in all_tables[3:]:
        parts.append(table.html())
    if mae_figures:
        parts.append("<h2>MAE pretraining</h2>" + "".join(_img(p, c) for p, c in mae_figures))
    parts.append("<h2>Data</h2>" + _data_summary(study / "split.csv"))
    parts.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=2)) + "</pre>")
    parts.append("</body></html>")
    path = study / "report.html"
    write_atomic(path, "\n".join(parts))
    return path


def _data_summary(split_csv: Path) -> str:
    if not split_csv.exists():
        return "<p>No split yet.</p>"
    from leanmae.data.split import counts, read_manifest

    _, items = read_manifest(split_csv)
    table = counts(items)
    labels = sorted({it.label for it in items})
    rows = [[split] + [table[split].get(c, 0) for c in labels] + [sum(table[split].values())] for split in table]
    return Table("data", "Images per class per split", ["split", *labels, "total"], rows).html()


def report(study: str | Path) -> Path:
    """``leanmae report DIR``: rebuild tables, figures and report.html from the finished runs."""
    path = write_report(Path(study))
    print(f"wrote {path} and {Path(study) / 'results'}")
    return path
