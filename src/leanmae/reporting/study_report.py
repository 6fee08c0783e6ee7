"""report.html and results/ of a study, computed from the finished runs in its folder.

Nothing here is written by hand: every number and every sentence comes from the runs' metrics.json
files, so ``leanmae report DIR`` can rebuild the report at any time, also from a study that is still
running (it reports what has finished and says how much that is). The page leads with the answer
(labels needed per arm and the label savings, from the learning curves), after naming any run that
collapsed or failed; the seed's table follows, then everything else. The same inputs give the same
bytes: the bootstrap is seeded and the date is the runs' own, not the clock's.

The parts live in their own modules: ``runs`` (finding runs and their labels), ``tables``,
``learning`` (the learning-curve answer), ``findings`` and ``figures``.
"""

from __future__ import annotations

import base64
import html
import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

import leanmae
from leanmae.config import STUDY_CONFIG_ONLY, StudyConfig, to_dict
from leanmae.errors import OutputFolderError
from leanmae.evaluation.stats import METHOD
from leanmae.files import read_json, write_atomic
from leanmae.reporting.figures import (
    confidence_figures,
    curves_figure,
    label_efficiency_figure,
    learning_curve_figure,
    recon_error_figure,
)
from leanmae.reporting.findings import findings, problems
from leanmae.reporting.learning import HOW, Answer, answer, headline, learning_table
from leanmae.reporting.plots import loss_curve
from leanmae.reporting.robustness import robustness_section
from leanmae.reporting.runs import (
    Run,
    failed_runs,
    load_runs,
    missing_maes,
    pct,
    planned_runs,
    pretrain_folders,
    read_history,
)
from leanmae.reporting.tables import Table, per_metric, scrolling, search_table, tables, times_table
from leanmae.safe_csv import markdown_text

__all__ = ["Table", "findings", "load_runs", "report", "tables", "times_table", "write_report"]

CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}\n"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:3px 6px;text-align:left}\n"
    "th{background:#f3f3f3}td:first-child{white-space:nowrap}img{max-width:100%}"
    "figure{margin:1.5em 0}figcaption{color:#555;font-size:13px}\n"
    "pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}.note{color:#a33}\n"
    ".answer{font-size:18px;line-height:1.45;"
    "background:#eef5ee;border-left:5px solid #4c9f70;padding:.6em 1em}\n"
    ".warn{background:#fdecea;border-left:5px solid #d1495b;padding:.6em 1em}"
    ".scroll{overflow-x:auto;max-width:100%}"
    ".meta{color:#555;font-size:13px}"
)


def _img(path: Path, caption: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def expected_runs(study: Path, settings: dict[str, Any]) -> int:
    """Fine-tuning runs the study asks for: the runs its last call planned (plan.json), else, for a study
    from before plan.json, every seed at every fraction and extra seeds at the small ones (which counts
    runs a semi-supervised or label-choosing arm skips with all labels)."""
    if (planned := planned_runs(study)) is not None:
        return len(planned)
    fractions, seeds = settings.get("fractions", []), settings.get("seeds", [])
    extra = [s for s in settings.get("extra_seeds", []) if s not in seeds]
    small = [f for f in fractions if f <= settings.get("extra_seeds_up_to", 0.1)]
    return len(settings.get("arms", [])) * (len(fractions) * len(seeds) + len(small) * len(extra))


def _commit() -> str:
    """The git commit of the leanmae source that builds the report, or "unknown" outside a checkout."""
    source = Path(leanmae.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


# StudyConfig keys that say where and how the runs ran, not what they are: left out of the study command
_PLACE_ONLY = ("jobs", "launcher", "wait", "slurm", "progress")
# keys given once with their values comma-separated; the other lists repeat their flag
_COMMA_LISTS = ("classes", "fractions", "seeds", "extra_seeds", "arms")
# the study's design, shown even at its default (a default may change between versions)
_ALWAYS = ("data", "classes", "pool", "preset", "fractions", "seeds", "arms")


def _study_command(study: Path, settings: dict[str, Any]) -> str:
    """The ``leanmae study`` command line that reproduces the study's settings: its design and every other
    setting that differs from the default, quoted for a shell (a --search holds ``|`` and ``;``). Where
    the runs ran (--jobs, --launcher, SLURM) is left out; a key with no flag (``split_ratios``...) is named
    after the command, to go in a --config YAML file. Why every key: a command missing --split or
    --search reproduces another study."""
    defaults = json.loads(json.dumps(to_dict(StudyConfig())))  # as study.json holds them: lists, not tuples
    flags = [f"--out {shlex.quote(str(study))}"]
    config_only = []
    for key, default in defaults.items():
        value = settings.get(key, default)
        if key in _PLACE_ONLY or (value == default and key not in _ALWAYS) or value in (None, "", []):
            continue
        flag = "--" + key.replace("_", "-")
        if key in _COMMA_LISTS:
            flags.append(
                f"{flag} "
                + shlex.quote(",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value))
            )
        elif key in STUDY_CONFIG_ONLY:
            config_only.append(f"{key}: {json.dumps(value)}")
        elif isinstance(value, list):
            flags += [f"{flag} {shlex.quote(str(v))}" for v in value]
        else:
            flags.append(f"{flag} {shlex.quote(str(value))}")
    command = "leanmae study " + " ".join(flags)
    return command + (f" --config FILE ({'; '.join(config_only)})" if config_only else "")


def _provenance(study: Path, runs: list[Run], settings: dict[str, Any], target: float | None) -> str:
    """Version, commit, date, device and commands, from the runs' run.json files and the code that reports."""
    devices = sorted({f"{r.info.get('device', '?')} x{r.info.get('world_size', 1)}" for r in runs})
    versions = sorted({r.info.get("versions", {}).get("leanmae", "?") for r in runs})
    torch = sorted({r.info.get("versions", {}).get("torch", "?") for r in runs})
    dates = sorted(r.info["started"][:10] for r in runs if r.info.get("started"))
    when = "" if not dates else (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}")
    report_cmd = f"leanmae report {study}" + (f" --target {target:g}" if target is not None else "")
    rows = [
        ("report built by", f"leanmae {leanmae.__version__}, commit {_commit()}"),
        ("runs made by", f"leanmae {', '.join(versions) or '?'}; torch {', '.join(torch) or '?'}"),
        ("runs started", when or "?"),
        ("device (x processes)", ", ".join(devices) or "?"),
        ("study command", _study_command(study, settings)),
        ("report command", report_cmd),
    ]
    return scrolling(
        "<table class='meta'>"
        + "".join(
            f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows
        )
        + "</table>"
    )


def _mae_section(folders: dict[str, Path], results: Path) -> tuple[list[str], str]:
    """(warnings to show at the top, the MAE pretraining section): errors beside the trivial predictors',
    probes."""
    warnings, parts = [], []
    for pool, folder in folders.items():
        recon_file = folder / "recon_metrics.json"
        title = "MAE pretraining" + ("" if pool == "pretrain" else f" on pool {pool}")
        parts.append(f"<h3>{html.escape(title)} (<code>{html.escape(str(folder))}</code>)</h3>")
        if not recon_file.exists():
            parts.append("<p>No reconstruction metrics (the pretraining has not finished).</p>")
            continue
        recon = read_json(recon_file)
        if recon.get("warning"):
            warnings.append(f"{title}: {recon['warning']}")
            parts.append(f"<p class='warn'>{html.escape(recon['warning'])}</p>")
        rows = [
            [
                ratio,
                *(
                    f"{row[k]:.4f}" if k in row else "—"
                    for k in ("masked_mse", "visible_mse", "visible_mean_mse", "neighbour_mse")
                ),
            ]
            for ratio, row in sorted(recon["by_mask_ratio"].items(), key=lambda kv: float(kv[0]))
        ]
        parts.append(
            Table(
                "recon",
                f"Reconstruction error ({recon['space']}) by mask ratio: the MAE beside two trivial "
                "predictors of the masked patches",
                [
                    "mask ratio",
                    "MAE masked",
                    "MAE visible",
                    "trivial: mean of visible",
                    "trivial: nearest visible",
                ],
                rows,
            ).html()
        )
        if recon.get("representation"):
            rep = recon["representation"]
            parts.append(
                Table(
                    "representation",
                    "Frozen encoder on the labelled validation images",
                    list(rep),
                    [[f"{v:.3f}" for v in rep.values()]],
                ).html()
            )
        suffix = "" if pool == "pretrain" else "_" + pool
        figure = recon_error_figure(
            recon, results / f"mae_recon_errors{suffix}.png", f"{title}: reconstruction error"
        )
        loss = folder / "loss.png"
        if (folder / "history.csv").exists():  # redrawn, so that folders from before the log axis read too
            loss = loss_curve(
                read_history(folder / "history.csv"), results / f"mae_loss{suffix}.png", f"{title}: loss"
            )
        parts += [
            _img(loss, f"{title}: loss per epoch (log scale)"),
            _img(
                folder / "reconstructions.png",
                f"{title}: reconstructions of held-out images. The MAE's loss is computed on the masked "
                "patches only, so the visible patches are not trained to be reproduced: judge the masked "
                "ones, and the reconstruction with the visible patches pasted back.",
            ),
            _img(
                figure,
                f"{title}: error on masked and visible patches by mask ratio, beside the trivial predictors",
            ),
        ]
    return warnings, ("<h2>MAE pretraining</h2>" + "".join(parts)) if parts else ""


def _data_summary(split_csv: Path) -> str:
    if not split_csv.exists():
        return "<p>No split yet.</p>"
    from leanmae.data.split import counts, read_manifest

    _, items = read_manifest(split_csv)
    table = counts(items)
    labels = sorted({it.label for it in items})
    rows = [
        [split] + [table[split].get(c, 0) for c in labels] + [sum(table[split].values())] for split in table
    ]
    return Table("data", "Images per class per split", ["split", *labels, "total"], rows).html()


def _answer_part(runs: list[Run], a: Answer | None, results: Path) -> tuple[list[str], str]:
    lines = headline(a, runs)
    if a is None:
        return lines, ""
    parts = [
        _img(
            learning_curve_figure(runs, a, results / "learning_curves.png"),
            "Learning curves: every run (points); each arm's mean over seeds at every label count, made "
            "monotone and joined in log labels (squares, solid), which gives the labels it needs for the "
            "target (triangles); its fitted inverse power law with a 95 % bootstrap band (dashed), to show "
            "how much the answer depends on the curve; shaded: outside the label counts run",
        )
    ]
    if a.val_mode == "full":
        parts.append(
            "<p class='note'>These runs chose their epoch on the whole validation split (validation "
            "mode 'full'); those labels are not counted above, so a lab with this budget would need "
            "somewhat more.</p>"
        )
    parts.append(learning_table(a).html())
    parts.append(f"<p class='meta'>Labels needed and savings: {html.escape(HOW)}.</p>")
    return lines, "".join(parts)


def write_report(study: Path, target: float | None = None) -> Path:
    """Write results/ (tables and figures) and report.html for the study in ``study``."""
    study = Path(study)
    results = study / "results"
    results.mkdir(parents=True, exist_ok=True)
    runs, failed = load_runs(study), failed_runs(study)
    settings = read_json(study / "study.json") if (study / "study.json").exists() else {}
    pretrains = pretrain_folders(study, settings)
    expected = expected_runs(study, settings) or len(runs)
    all_tables = {t.name: t for t in tables(runs)} if runs else {}
    a = answer(runs, target) if runs else None
    lines, answer_html = (
        _answer_part(runs, a, results) if runs else (["No fine-tuning run has finished yet."], "")
    )
    if a is not None:
        all_tables["labels_needed"] = learning_table(a)
    search = search_table(study / "search.csv", settings.get("search_beyond"))
    if search is not None:
        all_tables["search"] = search
    for table in all_tables.values():
        write_atomic(results / f"{table.name}.csv", table.csv())
    note = f"**{markdown_text(settings['note'])}**\n\n" if settings.get("note") else ""
    write_atomic(
        results / "tables.md",
        note + ("\n".join(t.markdown() for t in all_tables.values()) or "No finished runs yet.\n"),
    )
    text = findings(runs, failed)
    write_atomic(results / "findings.md", "\n".join(f"- {line}" for line in [*lines, *text]) + "\n")
    mae_warnings, mae_html = _mae_section(pretrains, results)

    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>leanmae study "
        f"report</title><style>{CSS}</style></head><body>"
    ]
    if settings.get("note"):
        parts.append(f"<div class='warn'><b>{html.escape(str(settings['note']))}</b></div>")
    parts.append("<h1>How many labels do we need, and does MAE pretraining cut that number?</h1>")
    parts.append(_provenance(study, runs, settings, target))
    parts.append(f"<p>{len(runs)} of {expected} fine-tuning runs finished.</p>")
    if len(runs) < expected:
        parts.append(
            "<p class='note'>The study is not complete: the numbers below cover only the finished runs.</p>"
        )
    warnings = [*problems(runs, failed), *missing_maes(study, settings), *mae_warnings]
    if warnings:
        parts.append(
            "<div class='warn'><b>Read first:</b><ul>"
            + "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
            + "</ul></div>"
        )
    parts.append(
        "<h2>The answer</h2><div class='answer' id='headline'>"
        + "".join(f"<p>{html.escape(line)}</p>" for line in lines)
        + "</div>"
    )
    parts.append(answer_html)
    if "summary" in all_tables:
        parts += [t.html() for t in per_metric(all_tables["summary"])]
    parts.append(
        f"<p class='meta'>Intervals: {html.escape(METHOD)}; every interval lies inside the metric's "
        "range.</p>"
    )
    parts.append(
        "<h2>Findings</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in text) + "</ul>"
    )
    for name in ("labels", "search", "paired", "trust"):
        if name in all_tables:
            parts.append(all_tables[name].html())
    if runs:
        times = times_table(runs, *pretrains.values())
        write_atomic(results / "times.csv", times.csv())
        parts.append(times.html())
        figures = [
            (
                label_efficiency_figure(runs, results / "label_efficiency.png"),
                "Label-efficiency curves (log x axis; bands: 95 % interval over seeds)",
            ),
            (curves_figure(runs, results / "training_curves.png"), "Training curves of every run"),
        ]
        figures += [
            (p, f"Confidence box plots, correct vs wrong, per class ({pct(f)} of the labels)")
            for p, f in confidence_figures(runs, results)
        ]
        parts.append("<h2>Figures</h2>" + "".join(_img(p, c) for p, c in figures))
    parts.append(robustness_section(runs, results, _img))
    for name in ("per_class_f1", "confidence", "runs"):
        if name in all_tables:
            parts.append(all_tables[name].html())
    parts.append(mae_html)
    parts.append("<h2>Data</h2>" + _data_summary(study / "split.csv"))
    parts.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=2)) + "</pre>")
    parts.append("</body></html>")
    path = study / "report.html"
    write_atomic(path, "\n".join(parts))
    return path


def report(study: str | Path, target: float | None = None) -> Path:
    """``leanmae report DIR [--target F1]``: rebuild tables, figures and report.html from the finished runs.

    A folder that holds no study (no study.json, no runs/) is refused before anything is written, so a
    mistyped path does not fill a new folder with an empty report.
    """
    if not (Path(study) / "study.json").exists() and not (Path(study) / "runs").is_dir():
        raise OutputFolderError(
            f"{study}: not a study folder (no study.json or runs/); give the folder `leanmae study "
            "--out` wrote"
        )
    path = write_report(Path(study), target)
    print(f"wrote {path} and {Path(study) / 'results'}")
    return path
