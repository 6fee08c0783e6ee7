"""The study report from tiny fake study folders: the answer first, labels as counts, collapsed runs withheld,
a real browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

import leanmae
from helpers import FAKE_CLASSES as CLASSES
from helpers import FAKE_FRACTIONS as FRACTIONS
from helpers import read_csv
from helpers import write_fake_run as _write_run
from leanmae.cli import main
from leanmae.evaluation.learning_curve import PowerLaw
from leanmae.reporting.findings import findings
from leanmae.reporting.plots import loss_curve, reliability_figure, risk_coverage_figure, training_curves
from leanmae.reporting.runs import load_runs, missing_maes, pretrain_folders

LAWS = {"scratch": PowerLaw(0.95, 2.0, 0.5), "mae-in-domain": PowerLaw(0.95, 1.0, 0.5)}


def make_study(root: Path, collapse: str = "none") -> Path:
    """A finished study with arms scratch and mae-in-domain whose macro-F1 follow known laws.

    collapse: "none"; "one" (scratch at 1 %, seed 0 predicts one class); "all" (every run does).
    """
    study = root / "study"
    study.mkdir()
    seeds = {0.01: [0, 1, 2], 0.1: [0, 1, 2], 0.5: [0, 1], 1.0: [0, 1]}  # seeds may differ by fraction
    for arm, law in LAWS.items():
        for fraction, n in FRACTIONS.items():
            for seed in seeds[fraction]:
                wobble = 0.004 * (seed - 1)
                broken = collapse == "all" or (
                    collapse == "one" and arm == "scratch" and fraction == 0.01 and seed == 0
                )
                _write_run(study, arm, fraction, seed, float(law(n + 2)) + wobble, collapsed=broken)
    settings = {
        "fractions": list(FRACTIONS),
        "seeds": [0, 1, 2],
        "arms": list(LAWS),
        "data": "cells",
        "preset": "cpu",
    }
    (study / "study.json").write_text(json.dumps(settings))
    return study


def test_the_report_leads_with_labels_needed_and_savings(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    page = leanmae.report(study).read_text()
    answer = _headline(page)
    assert (
        "With mae-in-domain" in answer
        and "labelled images" in answer
        and "times as many" in answer
        and "95 % interval" in answer
    )
    assert page.index("id='headline'") < page.index("Learning curves: every run")
    assert (
        page.index("id='headline'")
        < page.index("Test metrics per label fraction")
        < page.index("<h2>Findings</h2>")
    )
    assert "label savings vs scratch" in page
    for key in ("report built by", "runs started", "device", "study command", "report command"):
        assert key in page


def _cells(row: str) -> tuple[float, float, float, float]:
    """(answer, interval low, interval high, power law) of a labels_needed.csv cell."""
    found = re.search(r"([\d.,]+) \[95 % interval ([\d.,]+)–([\d.,]+); power law ([\d.,]+)", row)
    return tuple(float(x.replace(",", "")) for x in found.groups())


def test_labels_needed_are_read_between_the_runs_with_the_power_law_beside_them(tmp_path: Path) -> None:
    """Scratch's b is twice the arm's with c = 0.5: the true savings are 4 (scratch needs 400 labels, the
    arm 100). The runs lie a decade apart, so the straight reading between them is off; the power law
    (the true shape here) says 4, and the interval, which spans both readings, covers it."""
    study = make_study(tmp_path)
    leanmae.report(study, target=0.85)
    table = (study / "results" / "labels_needed.csv").read_text().splitlines()
    mae_row = next(line for line in table if line.startswith("mae-in-domain"))
    point, low, high, law = _cells(mae_row.split(",")[-2])
    assert law == pytest.approx(4.0, abs=0.4) and low <= 4.0 <= high and low <= point <= high
    page = (study / "report.html").read_text()
    assert "--target 0.85" in page and "extrapolated" not in _headline(page)


def test_an_answer_beyond_the_largest_run_says_extrapolated_in_its_own_sentence(tmp_path: Path) -> None:
    """Scratch needs 1,600 labels for 0.9 and the largest run has 1,002: the answer is "not reached within"
    them, and the sentence that gives the power law's guess beyond them says it is extrapolated."""
    study = make_study(tmp_path)
    page = leanmae.report(study, target=0.9).read_text()
    (sentence,) = [line for line in _headline(page).split("</p>") if "With mae-in-domain" in line]
    assert "from scratch, with no unlabelled images, it is not reached within the 1,002 labelled" in sentence
    assert "extrapolated" in sentence
    assert "more than" in sentence  # the savings are a bound, not a number read from a guess


def test_no_headline_gives_a_number_of_labels_outside_the_runs_without_the_word_extrapolated(
    tmp_path: Path,
) -> None:
    """Targets reached below the fewest labels run (12), between the runs, beyond the most (1,002) for
    scratch or for both arms, or never: every sentence with a label count outside 12-1,002 says
    "extrapolated", and a sentence without one does not."""
    from dataclasses import replace

    from leanmae.reporting.learning import answer, headline

    runs = load_runs(make_study(tmp_path))
    fitted = answer(runs)
    label_count = re.compile(r"(?<![\w.,-])\d{1,3}(?:,\d{3})*(?![\d.,]*\d)(?! %| per class)")
    for target in (0.5, 0.85, 0.9, 0.935, 0.97):
        for line in headline(replace(fitted, target=target), runs):
            outside = [n for n in label_count.findall(line) if not 12 <= int(n.replace(",", "")) <= 1002]
            assert bool(outside) == ("extrapolated" in line), (target, outside, line)


def _headline(page: str) -> str:
    return re.search(r"<div class='answer' id='headline'>(.*?)</div>", page, re.S).group(1)


def test_the_first_sentence_says_the_labelled_and_the_unlabelled_images_used(tmp_path: Path) -> None:
    """An MAE arm's unlabelled images come from its pretraining's run.json (the runs record the MAE they
    started from); where the runs do not say, the sentence says unknown rather than guess."""
    study = make_study(tmp_path)
    first = _headline(leanmae.report(study).read_text()).split("</p>")[0]
    assert "labelled images (about" in first and "unlabelled images: unknown" in first
    (study / "mae" / "model").mkdir(parents=True)
    (study / "mae" / "run.json").write_text(json.dumps({"images": {"train": 1400, "val": 100}}))
    for metrics_file in (study / "runs").glob("mae-in-domain_*/metrics.json"):
        metrics_file.write_text(json.dumps({**json.loads(metrics_file.read_text()), "init": "mae/model"}))
    first = _headline(leanmae.report(study).read_text()).split("</p>")[0]
    assert (
        first.startswith("<p>With mae-in-domain, ")
        and "plus the 1,500 unlabelled images of its pretraining pool reach" in first
    )
    assert "from scratch, with no unlabelled images" in first
    (study / "mae" / "run.json").unlink()  # the model folder alone, as a lab receives a shared MAE
    recorded = {"kind": "mae", "unlabelled_images": 900}
    (study / "mae" / "model" / "leanmae.json").write_text(json.dumps(recorded))
    first = _headline(leanmae.report(study).read_text()).split("</p>")[0]
    assert "plus the 900 unlabelled images of its pretraining pool reach" in first


def test_labels_appear_as_counts_beside_every_percentage(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    leanmae.report(study)
    summary = (study / "results" / "summary.csv").read_text()
    assert "1 % (12 labels, 6–6 per class)" in summary and "100 % (1002 labels, 501–501 per class)" in summary
    labels = (study / "results" / "labels.csv").read_text()
    assert "honest (2)" in labels


def test_every_interval_in_every_table_lies_inside_the_range(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    leanmae.report(study)
    for name in ("summary", "per_class_f1", "confidence"):
        for low, high in re.findall(
            r"\[(-?\d\.\d+), (-?\d\.\d+)\]", (study / "results" / f"{name}.csv").read_text()
        ):
            assert -1 <= float(low) <= float(high) <= 1, name


def test_collapsed_runs_are_named_first_and_their_findings_withheld(tmp_path: Path) -> None:
    study = make_study(tmp_path, collapse="one")
    runs = load_runs(study)
    lines = findings(runs)
    assert lines[0].startswith("Collapsed: scratch at 1 %")
    assert any(line.startswith("Withheld: mae-in-domain minus scratch macro-F1 at 1 %") for line in lines)
    assert not any("at 1 % of the labels (" in line for line in lines)
    page = leanmae.report(study).read_text()
    assert page.index("Read first") < page.index("id='headline'")
    assert "Read without the collapsed run(s) scratch at 1 %, seed 0" in page


def test_a_study_where_every_run_collapsed_states_no_finding_from_them(tmp_path: Path) -> None:
    study = make_study(tmp_path, collapse="all")
    runs = load_runs(study)
    lines = findings(runs)
    assert all(line.startswith(("Collapsed:", "Withheld:")) for line in lines), lines
    page = leanmae.report(study).read_text()
    assert "Withheld" in _headline(page) and "reach macro-F1" not in _headline(page)


def test_a_failed_run_is_named_first_with_whether_rerunning_the_study_retries_it(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    for name in ("scratch_f0.25_s0", "scratch_f0.5_s2"):
        (study / "runs" / name).mkdir()
        (study / "runs" / name / "run.json").write_text(json.dumps({"status": "failed"}))
    (study / "plan.json").write_text(json.dumps({"runs": ["scratch_f0.5_s2"]}))
    page = html.unescape(leanmae.report(study).read_text())
    read_first = page[page.index("Read first") : page.index("id='headline'")]
    assert "Failed run: scratch_f0.5_s2 (its run.json says failed; rerun the study to retry it)" in read_first
    assert "outside the study's current plan: scratch_f0.25_s0 (rerunning the study leaves it" in read_first


def test_a_temporary_copy_a_killed_process_left_beside_the_runs_is_not_a_run(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    before = len(load_runs(study))
    shutil.copytree(study / "runs" / "scratch_f0.01_s0", study / "runs" / ".scratch_f0.01_s0.tmp-999")
    assert len(load_runs(study)) == before and all(not r.arm.startswith(".") for r in load_runs(study))


def test_old_runs_take_their_labels_from_the_split_manifest(tmp_path: Path) -> None:
    from leanmae.data.split import label_fraction, read_manifest

    study = tmp_path / "study"
    rows = (
        ["path,label,split,sha256"]
        + [f"{c}/{i}.png,{c},train,0" for c in CLASSES for i in range(50)]
        + [f"{c}/v{i}.png,{c},val,0" for c in CLASSES for i in range(5)]
    )
    study.mkdir()
    (study / "split.csv").write_text("\n".join(rows) + "\n")
    FRACTIONS[0.1] = 10
    try:
        _write_run(study, "mae", 0.1, 0, 0.8, labels_used=False)
    finally:
        FRACTIONS[0.1] = 100
    run = load_runs(study)[0]
    expected = label_fraction(read_manifest(study / "split.csv")[1], 0.1, 0)
    assert run.labels.val_mode == "full" and run.labels.total == len(expected) == 10
    assert run.labels.train == {"a": 5, "b": 5}


def test_pretraining_folders_old_new_and_given_are_all_found(tmp_path: Path) -> None:
    for name in ("pretrain", "pretrain-in-domain"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text("{}")
    other = tmp_path / "elsewhere"
    other.mkdir()
    found = pretrain_folders(tmp_path, {"mae": [f"other={other}", "missing=/nowhere"]})
    assert found == {
        "other": other,
        "pretrain": tmp_path / "pretrain",
        "in-domain": tmp_path / "pretrain-in-domain",
    }
    assert pretrain_folders(tmp_path / "pretrain", {"mae": None}) == {}
    # one not found from here is named, not dropped without a word (the report warns with it)
    (line,) = missing_maes(tmp_path, {"mae": [f"other={other}", "missing=/nowhere"]})
    assert line.startswith("MAE missing=/nowhere: not found from ")


def test_the_mae_warning_and_trivial_errors_are_shown(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    folder = study / "pretrain-other"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "finished", "wall_seconds": 600}))
    recon = {
        "space": "normalised pixels",
        "training_mask_ratio": 0.75,
        "warning": "masked error is no better than a trivial predictor",
        "by_mask_ratio": {
            "0.75": {"masked_mse": 0.3, "visible_mse": 0.5, "visible_mean_mse": 0.31, "neighbour_mse": 0.29}
        },
    }
    (folder / "recon_metrics.json").write_text(json.dumps(recon))
    plt.imsave(folder / "reconstructions.png", np.zeros((8, 32, 3)))
    _write_history(folder / "history.csv", epochs=211)
    page = leanmae.report(study).read_text()
    assert page.index("masked error is no better") < page.index("id='headline'")
    assert "trivial: nearest visible" in page and "0.2900" in page
    assert "loss is computed on the masked patches only, so the visible patches are not trained" in page
    assert (study / "results" / "mae_loss_other.png").exists()  # redrawn from history.csv, readable


def _write_history(path: Path, epochs: int) -> None:
    rows = [f"{e},{2 / e + 0.1},{1.5 / e + 0.12}" for e in range(1, epochs + 1)]
    path.write_text("epoch,train_loss,val_loss\n" + "\n".join(rows) + "\n")


def test_a_target_outside_0_and_1_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    study = make_study(tmp_path)
    assert main(["report", str(study), "--target", "1.5"]) == 2
    assert "--target 1.5" in capsys.readouterr().err


def test_the_report_is_the_same_when_rebuilt(tmp_path: Path) -> None:
    study = make_study(tmp_path)
    first = leanmae.report(study).read_bytes()
    assert leanmae.report(study).read_bytes() == first


# --------------------------------------------------------------------------- in a real browser

CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const fetched = performance.getEntriesByType("resource").map(e => e.name)
    .filter(n => !n.startsWith("data:"));
  const headline = (document.getElementById("headline") || {}).innerText || "";
  const page = document.documentElement;
  const wide = page.scrollWidth > page.clientWidth;  // something wider than the window widens the page
  const out = document.createElement("pre");
  out.id = "ver" + "dict";  // split, so that this script's own text never matches
  out.textContent = JSON.stringify({images: images.length, broken, fetched, headline, wide});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip(
            "chromium is not installed (Debian: apt-get install chromium; .ci/run installs it): "
            "the browser test is skipped"
        )
    return found


def test_the_report_renders_in_a_headless_browser_with_every_image_and_nothing_fetched(
    tmp_path: Path,
) -> None:
    chromium = _chromium()
    study = make_study(tmp_path)
    page = leanmae.report(study).read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", CHECK + "</body>"))
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="verdict">(.*?)</pre>', result.stdout, re.S)
    assert found, f"no verdict from the page; chromium said: {result.stderr[-2000:]}"
    verdict = json.loads(html.unescape(found.group(1)))
    assert verdict["images"] >= 4 and verdict["broken"] == []
    assert verdict["fetched"] == []
    assert "labelled images" in verdict["headline"] and "times as many" in verdict["headline"]
    assert not verdict["wide"]  # every wide table scrolls inside its box


def test_report_on_a_mistyped_path_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    from leanmae.errors import OutputFolderError

    with pytest.raises(OutputFolderError, match="not a study folder"):
        leanmae.report(tmp_path / "pbc-stduy")
    assert not (tmp_path / "pbc-stduy").exists()


def test_an_arm_with_too_few_label_counts_is_withheld_not_a_crash(tmp_path: Path) -> None:
    """A study still running: scratch has reached 50 %, the MAE arm only 10 %: the MAE curve is withheld,
    and the target says it comes from scratch's largest run so far, not from all labels."""
    import shutil

    from leanmae.reporting.learning import answer, headline
    from leanmae.reporting.runs import load_runs

    study = make_study(tmp_path)
    for name in (
        "scratch_f1_s0",
        "scratch_f1_s1",
        "mae-in-domain_f0.5_s0",
        "mae-in-domain_f0.5_s1",
        "mae-in-domain_f1_s0",
        "mae-in-domain_f1_s1",
    ):
        shutil.rmtree(study / "runs" / name)
    runs = load_runs(study)
    a = answer(runs)
    assert a is not None and "label count" in a.withheld["mae-in-domain"]
    assert "largest run so far" in a.target_source
    assert any("Withheld for mae-in-domain" in line for line in headline(a, runs))
    leanmae.report(study)  # and the whole report is written


def test_a_studys_note_comes_first_in_the_report_and_its_tables(tmp_path: Path) -> None:
    """The demo's report says SYNTHETIC before anything else, as everything the demo writes does."""
    study = make_study(tmp_path)
    settings = json.loads((study / "study.json").read_text())
    (study / "study.json").write_text(json.dumps({**settings, "note": "SYNTHETIC <demo>"}))
    page = leanmae.report(study).read_text()
    assert page.index("SYNTHETIC &lt;demo&gt;") < page.index("<h1>")
    assert (study / "results" / "tables.md").read_text().startswith("**SYNTHETIC &lt;demo&gt;**")


# --------------------------------------------------------------------------- a page a lab can read


def test_no_table_is_wider_than_the_page(tmp_path: Path) -> None:
    """Every table sits in a box that scrolls sideways, so that none widens the page; the summary is one
    table per metric, narrow enough to read whole (the browser test measures the page too)."""
    page = leanmae.report(make_study(tmp_path)).read_text()
    assert ".scroll{overflow-x:auto" in page
    assert page.count("<table") == page.count("<div class='scroll'><table") > 0
    summaries = re.findall(r"<h3>[^<]*Test metrics per label fraction.*?</table>", page, re.S)
    assert len(summaries) == 4  # accuracy, precision, recall, F1
    for table in summaries:
        assert table.count("<th>") == 4  # labels, scratch, mae-in-domain, its gain


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure saved while the test runs, kept to be looked at after it is written."""
    saved: list[Figure] = []
    savefig = Figure.savefig

    def keep(fig: Figure, *args: object, **kwargs: object) -> None:
        saved.append(fig)
        savefig(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return saved


def test_legends_never_cover_curves(tmp_path: Path, figures: list[Figure]) -> None:
    """No legend overlaps any panel of its figure: the report's figures, and a classifier's own."""
    from leanmae.evaluation.calibration import reliability_bins, risk_coverage

    leanmae.report(make_study(tmp_path))
    rng = np.random.default_rng(0)
    truth, probs = rng.integers(0, 2, 200), rng.dirichlet([1, 1], 200)
    bins = reliability_bins(probs, truth)
    reliability_figure(bins, bins, (0.1, 0.05), 1.5, tmp_path / "r.png", "reliability")
    risk_coverage_figure({"before": risk_coverage(probs, truth)}, (0.8, 0.05), tmp_path / "rc.png", "risk")
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1 / e, "val_accuracy": 0.5, "val_macro_f1": 0.5}
        for e in range(1, 6)
    ]
    training_curves(history, tmp_path / "t.png", "fine-tuning")
    loss_curve(history, tmp_path / "l.png", "pretraining")
    assert len(figures) >= 9
    for fig in figures:
        fig.canvas.draw()
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert legends, fig.axes[0].get_title()
        for legend in legends:
            box = legend.get_window_extent()
            assert not any(box.overlaps(ax.get_window_extent()) for ax in fig.axes), fig.axes[0].get_title()


def test_a_long_pretraining_loss_is_a_running_mean_over_its_raw_line_on_a_log_axis(
    tmp_path: Path, figures: list[Figure]
) -> None:
    """At 200+ epochs a linear axis spends its height on the first epochs and per-epoch noise hides the
    trend; a short run keeps its plain lines with markers."""
    history = [{"epoch": e, "train_loss": 2 / e + 0.1, "val_loss": 1.5 / e + 0.12} for e in range(1, 212)]
    loss_curve(history, tmp_path / "long.png", "MAE")
    loss_curve(history[:10], tmp_path / "short.png", "MAE")
    long, short = (fig.axes[0] for fig in figures)
    assert long.get_yscale() == "log"
    raw, mean = long.lines[:2]
    assert raw.get_alpha() < 1 and raw.get_label().startswith("_") and "running mean" in mean.get_label()
    assert [line.get_label() for line in short.lines] == ["train", "validation"]


def test_the_confidence_figure_gives_each_arm_its_own_panel_of_the_same_size(
    tmp_path: Path, figures: list[Figure]
) -> None:
    """Four arms side by side in one panel made boxes too thin to read, a figure 3,500 pixels wide, and
    every arm after the first drawn alike: each arm now has its own panel, titled, on shared axes."""
    from leanmae.reporting.plots import confidence_boxplot

    rng = np.random.default_rng(0)
    arms = ["scratch", "mae-in-domain", "mae-in-domain+margin", "mae-other"]
    groups = {arm: {"true": rng.integers(0, 3, 60), "probs": rng.dirichlet([1, 1, 1], 60)} for arm in arms}
    confidence_boxplot(groups, ["a", "b", "c"], tmp_path / "c.png", "Confidence")
    (fig,) = figures
    assert [ax.get_title(loc="left") for ax in fig.axes] == arms
    assert len({ax.get_ylim() for ax in fig.axes}) == 1 and fig.get_size_inches()[0] < 10


def test_each_finding_is_one_line_over_every_label_fraction(tmp_path: Path) -> None:
    lines = findings(load_runs(make_study(tmp_path)))
    (gains,) = [line for line in lines if line.startswith("mae-in-domain initialisation")]
    assert all(f"{p} of the labels (" in gains for p in ("1 %", "10 %", "50 %", "100 %"))
    assert len([line for line in lines if line.startswith("Wrong predictions of mae-in-domain")]) == 1
    assert len(lines) == 2


def test_the_study_command_in_the_report_gives_back_every_setting_of_the_study(tmp_path: Path) -> None:
    """Parsed by ``leanmae study``'s own parser, the report's command gives back every setting that decides
    what the study runs (it had left out --split, --search, --search-beyond, --arm-set and --extra-seeds,
    and a --search's "|" and ";" need quotes); a key with no flag is named for the --config file."""
    import shlex

    from leanmae.cli import build_parser
    from leanmae.config import STUDY_CONFIG_ONLY, StudyConfig, to_dict
    from leanmae.reporting.study_report import _PLACE_ONLY, _study_command

    cfg = StudyConfig(
        data="my cells",
        classes=["a b", "c"],
        pretrain_data=["pool one:x,y", "pool2"],
        ood_data=["ood"],
        external=["lab 2"],
        shift_reference="ref",
        pool="in-domain",
        preset="seed-exp1",
        fractions=[0.05, 1.0],
        seeds=[4, 5],
        extra_seeds=[6],
        extra_seeds_up_to=0.5,
        arms=["scratch", "mae+margin"],
        mae=["in-domain=m"],
        split_seed=3,
        split="s.csv",
        pretrain_epochs=7,
        finetune_epochs=8,
        set=["optim.base_lr=1e-3"],
        arm_set=["mae+margin:classifier.selection=margin"],
        search=["optim.base_lr=5e-4|1e-3", "optim.epochs=15;classifier.min_steps=600|optim.epochs=30"],
        search_beyond="optim.epochs=60;classifier.min_steps=2400",
        note="what it is; really",
    )
    settings = json.loads(json.dumps(to_dict(cfg)))
    command = _study_command(tmp_path / "my study", settings)
    words = shlex.split(command.split(" --config FILE ")[0])
    assert words[:2] == ["leanmae", "study"]
    args = vars(build_parser().parse_args(words[1:]))
    assert args["out"] == str(tmp_path / "my study")
    for key, value in settings.items():
        if key in _PLACE_ONLY or key in STUDY_CONFIG_ONLY:
            continue
        given = args[key]
        if isinstance(value, list) and isinstance(given, str):  # a comma-separated flag
            given = [type(value[0])(v) for v in given.split(",")]
        assert given == value, key
    assert "split_seed: 3" in command and "extra_seeds_up_to: 0.5" in command
    assert "split_ratios" not in command  # at its default


def test_a_study_still_running_has_no_empty_comparison_and_says_no_direction_the_numbers_do_not_show(
    tmp_path: Path,
) -> None:
    """A study part-way: the MAE arm has no run at 100 % yet and one seed at 1 %. The paired table has no
    row without a pair (it had rows of "+nan" over 0 seeds), and wrong predictions as confident as
    scratch's to the two decimals shown are not called more or less confident."""
    study = make_study(tmp_path)
    for name in (
        "mae-in-domain_f1_s0",
        "mae-in-domain_f1_s1",
        "mae-in-domain_f0.01_s1",
        "mae-in-domain_f0.01_s2",
    ):
        shutil.rmtree(study / "runs" / name)
    leanmae.report(study)
    rows = read_csv(study / "results" / "paired.csv")
    assert rows and all(int(row["seeds"]) > 0 for row in rows)
    assert not any(row["labels"] == "100 %" for row in rows)
    (wrong,) = [line for line in findings(load_runs(study)) if line.startswith("Wrong predictions")]
    assert "are as confident as from scratch (one seed, no interval) at 1 % of the labels" in wrong
    assert "more confident" not in wrong and "less confident" not in wrong


def test_a_refer_threshold_chosen_on_too_few_validation_images_is_flagged_as_rough(tmp_path: Path) -> None:
    """The rule of three: showing 99 % accuracy takes at least 300 validation images, even with no mistake.
    The report says where the threshold rested on fewer, and shows every cell's count beside its coverage."""
    study = make_study(tmp_path)
    val_images = {0.01: 12, 0.1: 120, 0.5: 600, 1.0: 1200}
    for folder in (study / "runs").iterdir():
        metrics = json.loads((folder / "metrics.json").read_text())
        ece = {"before": {"ece": 0.05}, "after": {"ece": 0.02}}
        refer = {"target_accuracy": 0.99, "aurc": 0.01, "test": {"coverage": 0.8, "accuracy_kept": 0.99}}
        (folder / "metrics.json").write_text(json.dumps({**metrics, "calibration": ece, "refer": refer}))
        info = json.loads((folder / "run.json").read_text())
        info["images"] = {"val": val_images[metrics["fraction"]]}
        (folder / "run.json").write_text(json.dumps(info))
    (rough,) = [line for line in findings(load_runs(study)) if line.startswith("Rough:")]
    assert "at 1 % and 10 % of the labels" in rough and "on 12 to 120 validation images" in rough
    assert "99 % accuracy (at least 300 even with no mistake)" in rough
    leanmae.report(study)
    trust = read_csv(study / "results" / "trust.csv")
    shown = [row["threshold chosen on (val images)"] for row in trust]
    assert shown == [str(n) for n in val_images.values() for _arm in LAWS]


def test_labels_needed_are_reported_with_and_without_label_selection_and_semi_supervision(
    tmp_path: Path,
) -> None:
    """Issue 26's comparison in one report: a variant arm (``ARM+NAME``, its own --arm-set) gets its own
    learning curve, labels needed and savings, beside the arm it varies."""
    study = tmp_path / "study"
    laws = {
        "scratch": PowerLaw(0.95, 2.0, 0.5),
        "mae-in-domain": PowerLaw(0.95, 1.0, 0.5),
        "mae-in-domain+typiclust": PowerLaw(0.95, 0.8, 0.5),
        "mae-in-domain+fixmatch": PowerLaw(0.95, 0.6, 0.5),
    }
    for arm, law in laws.items():
        for fraction, n in FRACTIONS.items():
            for seed in (0, 1):
                _write_run(study, arm, fraction, seed, float(law(n + 2)) + 0.004 * (seed - 0.5))
    (study / "study.json").write_text(json.dumps({"fractions": list(FRACTIONS), "arms": list(laws)}))
    answer = _headline(leanmae.report(study).read_text())
    needed = (study / "results" / "labels_needed.csv").read_text()
    for arm in laws:
        assert f"\n{arm}," in needed
        if arm != "scratch":
            assert f"With {arm}," in answer


def test_an_arm_that_chose_its_own_labels_has_its_own_labels_row_and_is_named_in_the_pairing(
    tmp_path: Path,
) -> None:
    """Margin rounds label as many images as the stratified draw but other ones, and each seed its own: the
    labels table must not show the stratified counts for it, nor call its gain one on the same subset."""
    study = make_study(tmp_path)
    plain = read_csv(Path(leanmae.report(study)).parent / "results" / "labels.csv")
    assert "arms" not in plain[0] and len(plain) == len(FRACTIONS)  # one stratified draw per fraction
    for fraction, n in FRACTIONS.items():
        for seed in (0, 1):
            _write_run(study, "mae-in-domain+margin", fraction, seed, float(LAWS["mae-in-domain"](n + 2)))
            folder = study / "runs" / f"mae-in-domain+margin_f{fraction:g}_s{seed}"
            metrics = json.loads((folder / "metrics.json").read_text())
            metrics["labels_used"]["train"] = {"a": n // 2 - 1 - seed, "b": n // 2 + 1 + seed}
            (folder / "metrics.json").write_text(json.dumps(metrics))
            info = json.loads((folder / "run.json").read_text())
            info["config"] = {"classifier": {"selection": "margin"}}
            (folder / "run.json").write_text(json.dumps(info))
    page = leanmae.report(study).read_text()
    rows = read_csv(study / "results" / "labels.csv")
    shared = [r for r in rows if r["arms"] == "scratch, mae-in-domain"]
    own = [r for r in rows if r["arms"] == "mae-in-domain+margin"]
    assert len(shared) == len(own) == len(FRACTIONS)
    n = FRACTIONS[0.01]
    assert (shared[0]["a"], shared[0]["b"]) == (str(n // 2 + 1), str(n // 2 + 1))  # train plus one val label
    assert (own[0]["a"], own[0]["b"]) == (f"{n // 2 - 1} to {n // 2}", f"{n // 2 + 2} to {n // 2 + 3}")
    assert {r["labelled images"] for r in own} == {r["labelled images"] for r in shared}  # the same budget
    assert "the same labelled subset except mae-in-domain+margin, which chose its own" in page
    assert "mae-in-domain+margin against scratch" in page
    assert "mae-in-domain+margin initialisation" not in page


def test_run_times_count_the_recipe_search_and_not_an_mae_pretrained_before_the_study(tmp_path: Path) -> None:
    """A study's time is mostly its recipe candidates, so they count; an MAE given with --mae was pretrained
    days before, maybe on a GPU: its row says so, and neither the total nor the elapsed time spans it."""
    study = make_study(tmp_path)
    given = tmp_path / "gpu-mae"
    given.mkdir()
    (given / "run.json").write_text(
        json.dumps(
            {
                "status": "finished",
                "device": "cuda:0",
                "wall_seconds": 300,
                "started": "2026-11-01T00:00:00+0000",
            }
        )
    )
    settings = json.loads((study / "study.json").read_text())
    (study / "study.json").write_text(json.dumps({**settings, "mae": [f"in-domain={given}"]}))
    for i in range(3):
        candidate = study / "search" / f"scratch_f0.01_s0_c{i}"
        candidate.mkdir(parents=True)
        info = {"status": "finished", "wall_seconds": 120, "started": "2026-11-26T05:00:00+0000"}
        (candidate / "run.json").write_text(json.dumps({**info, "config": {"fraction": 0.01}}))
    shutil.copytree(candidate, study / "search" / f".{candidate.name}.tmp-123")  # a killed copy's leftover
    leanmae.report(study)
    rows = {row["run"]: row for row in read_csv(study / "results" / "times.csv")}
    assert "MAE pretraining, given: run before the study, on cuda:0" in rows
    searched = rows["recipe candidates (search/)"]
    assert (searched["labels"], searched["runs"], searched["total"]) == ("1 %", "3", "6.0")
    grid = sum(1 for _ in (study / "runs").iterdir())
    assert rows["all runs"]["runs"] == str(grid + 3)
    assert float(rows["all runs"]["total"]) == pytest.approx(grid + 6.0)  # a minute a run, two a candidate
    assert float(rows["elapsed, first start to last finish"]["total"]) == pytest.approx(
        5 + 1 + 2 / 60, abs=0.1
    )


def test_an_arm_that_stops_below_the_labels_scratch_needs_gets_no_ratio(tmp_path: Path) -> None:
    """A label choice has no run with all labels: where it does not reach the target within its 50 % runs and
    scratch reaches it only beyond them, the runs say nothing of which needs fewer, and the answer says so
    with the arm's own largest count, not the study's."""
    study = tmp_path / "study"
    laws = {"scratch": PowerLaw(0.95, 2.0, 0.5), "mae-in-domain+margin": PowerLaw(0.86, 1.0, 0.5)}
    for arm, law in laws.items():
        for fraction, n in FRACTIONS.items():
            if fraction < 1 or arm == "scratch":
                for seed in (0, 1):
                    _write_run(study, arm, fraction, seed, float(law(n + 2)) + 0.002 * (seed - 0.5))
    (study / "study.json").write_text(json.dumps({"fractions": list(FRACTIONS), "arms": list(laws)}))
    answer = _headline(leanmae.report(study, target=0.87).read_text())
    assert f"not reached within the {FRACTIONS[0.5] + 2} labelled images run" in answer
    assert "mae-in-domain+margin was not run with that many labels, so no ratio" in answer
    assert "costs labels" not in answer and "fewer" not in answer


def test_when_only_scratch_reaches_the_target_with_the_fewest_labels_the_ratio_is_a_bound(
    tmp_path: Path,
) -> None:
    study = tmp_path / "study"
    laws = {"scratch": PowerLaw(0.9, 0.0001, 0.5), "mae-in-domain": PowerLaw(0.95, 2.0, 0.5)}
    for arm, law in laws.items():
        for fraction, n in FRACTIONS.items():
            for seed in (0, 1):
                _write_run(study, arm, fraction, seed, float(law(n + 2)) + 0.002 * (seed - 0.5))
    (study / "study.json").write_text(json.dumps({"fractions": list(FRACTIONS), "arms": list(laws)}))
    answer = _headline(leanmae.report(study, target=0.88).read_text())
    assert "both reach it with the fewest labels" not in answer
    assert re.search(r"at most [\d.]+ times as many", answer)
