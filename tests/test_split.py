"""The study's fixed train/val/test split and the nested label fractions drawn inside its train part.

``make_split`` divides each class folder 70/10/20 (stratified, seeded) and records every file's
SHA-256 in a manifest that all runs of a study reuse; ``label_fraction`` picks the labelled training
images of one fraction so that, for a seed, 1 % ⊂ 10 % ⊂ 50 % ⊂ 100 % and no class is ever dropped.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import leanmae
from helpers import write_images
from leanmae.cli import main
from leanmae.data.split import (
    SPLITS,
    Item,
    counts,
    label_fraction,
    make_split,
    read_manifest,
    verify,
    write_manifest,
)
from leanmae.errors import DataError

# --------------------------------------------------------------------------- data

SIZES = {"basophil": 50, "lymphocyte": 30, "neutrophil": 20}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three class folders of unequal size (50 / 30 / 20 tiny PNGs), every file with distinct content."""
    root = tmp_path_factory.mktemp("labelled")
    for seed, (name, n) in enumerate(SIZES.items()):
        write_images(root / name, n, 16, seed=seed + 1)
    return root


def _by(items: list[Item], split: str, label: str) -> list[Item]:
    return [it for it in items if it.split == split and it.label == label]


# --------------------------------------------------------------------------- make_split


def test_every_class_is_divided_70_10_20(labelled: Path) -> None:
    items = make_split(labelled, list(SIZES))
    for label, n in SIZES.items():
        for split, share in zip(SPLITS, (0.7, 0.1, 0.2), strict=True):
            got = len(_by(items, split, label))
            assert abs(got - share * n) <= 1, (
                f"{label}: {got} of {n} in {split}, expected about {share * n:g}"
            )


def test_every_image_is_listed_exactly_once(labelled: Path) -> None:
    items = make_split(labelled, list(SIZES))
    paths = [it.relpath for it in items]
    assert len(paths) == len(set(paths)) == sum(SIZES.values())
    assert {p.split("/")[0] for p in paths} == set(SIZES)
    assert all(it.label == it.relpath.split("/")[0] for it in items), "the label is the class folder"
    assert all(len(it.sha256) == 64 for it in items)


def test_the_split_is_deterministic_for_a_seed_and_changes_with_it(labelled: Path) -> None:
    assert make_split(labelled, list(SIZES), seed=0) == make_split(labelled, list(SIZES), seed=0)
    test_0 = {it.relpath for it in make_split(labelled, list(SIZES), seed=0) if it.split == "test"}
    test_1 = {it.relpath for it in make_split(labelled, list(SIZES), seed=1) if it.split == "test"}
    assert test_0 != test_1


def test_a_class_split_does_not_depend_on_the_other_classes(labelled: Path) -> None:
    """Naming the classes in another order, or adding one, leaves each class's test images unchanged (as for
    label fractions)."""

    def test_images(classes: list[str]) -> dict[str, set[str]]:
        return {
            c: {it.relpath for it in _by(make_split(labelled, classes, seed=0), "test", c)} for c in classes
        }

    reference = test_images(["basophil", "lymphocyte", "neutrophil"])
    assert test_images(["neutrophil", "lymphocyte", "basophil"]) == reference
    assert test_images(["lymphocyte", "neutrophil"]) == {
        c: reference[c] for c in ("lymphocyte", "neutrophil")
    }


def test_a_class_of_three_images_appears_in_every_split(tmp_path: Path) -> None:
    write_images(tmp_path / "rare", 3, 16, seed=1)
    write_images(tmp_path / "common", 40, 16, seed=2)
    table = counts(make_split(tmp_path, ["rare", "common"]))
    assert table["train"]["rare"] == table["val"]["rare"] == table["test"]["rare"] == 1


@pytest.mark.parametrize("ratios", [(0.2, 0.4, 0.4), (0.1, 0.45, 0.45)])
def test_unusual_ratios_never_leave_a_class_out_of_a_split(
    tmp_path: Path, ratios: tuple[float, float, float]
) -> None:
    """Four images per class and a small train share: either every class is in every split, or a clear error.

    A split without training images for a class would only fail later, at fine-tuning time.
    """
    write_images(tmp_path / "a", 4, 16, seed=1)
    write_images(tmp_path / "b", 4, 16, seed=2)
    try:
        items = make_split(tmp_path, ["a", "b"], ratios)
    except DataError:
        return
    table = counts(items)
    for split in SPLITS:
        assert set(table[split]) == {"a", "b"}, f"ratios {ratios}: {split} holds {table[split]}"


def test_a_class_with_fewer_than_three_images_is_refused(tmp_path: Path) -> None:
    write_images(tmp_path / "rare", 2, 16, seed=1)
    write_images(tmp_path / "common", 20, 16, seed=2)
    with pytest.raises(DataError, match=r"rare.*2 image\(s\).*at least 3"):
        make_split(tmp_path, ["rare", "common"])


def test_a_single_class_is_not_a_classification_task(labelled: Path) -> None:
    with pytest.raises(DataError, match="at least two classes"):
        make_split(labelled, ["basophil"])


def test_ratios_that_do_not_sum_to_one_are_refused(labelled: Path) -> None:
    with pytest.raises(DataError, match="sum to 1"):
        make_split(labelled, list(SIZES), (0.7, 0.2, 0.2))


@pytest.mark.parametrize("ratios", ["nan,0.1,0.2", "0.7,0.3,0", "abc", "0.7,0.1"])
def test_ratios_that_are_not_three_shares_above_0_return_2(
    labelled: Path, tmp_path: Path, ratios: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "split",
                str(labelled),
                "--classes",
                "basophil,lymphocyte",
                "--out",
                str(tmp_path / "s.csv"),
                "--ratios",
                ratios,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "ratios" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()


def test_a_negative_split_seed_returns_2(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            [
                "split",
                str(labelled),
                "--classes",
                "basophil,lymphocyte",
                "--out",
                str(tmp_path / "s.csv"),
                "--seed",
                "-1",
            ]
        )
        == 2
    )
    assert "seed -1" in capsys.readouterr().err


def test_a_misspelt_class_names_the_nearest_folder(labelled: Path) -> None:
    with pytest.raises(DataError, match=r"no class folder 'neutrophl'; did you mean 'neutrophil'\?"):
        make_split(labelled, ["basophil", "neutrophl"])


def test_an_empty_class_folder_is_refused(labelled: Path, tmp_path: Path) -> None:
    write_images(tmp_path / "full", 10, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*holds no images"):
        make_split(tmp_path, ["full", "empty"])


# --------------------------------------------------------------------------- the manifest


def test_the_manifest_round_trips_items_and_root(labelled: Path, tmp_path: Path) -> None:
    items = make_split(labelled, list(SIZES))
    manifest = tmp_path / "study" / "split.csv"
    write_manifest(items, manifest, labelled)
    root, back = read_manifest(manifest)
    assert back == items
    assert root == labelled.resolve()
    verify(back, root)  # the files on disk are the ones listed


def test_the_manifest_is_a_plain_csv_that_dictreader_reads_with_its_root_as_a_column(
    labelled: Path, tmp_path: Path
) -> None:
    """The old first line ``# root: ...`` broke csv.DictReader and pandas; the root is a column now."""
    import csv

    manifest = tmp_path / "split.csv"
    write_manifest(make_split(labelled, list(SIZES)), manifest, labelled)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "split", "sha256", "root"]
    assert {row["root"] for row in rows} == {str(labelled.resolve())}
    assert len(rows) == sum(SIZES.values())


def test_an_old_manifest_with_a_root_comment_line_still_reads(labelled: Path, tmp_path: Path) -> None:
    items = make_split(labelled, list(SIZES))
    manifest = tmp_path / "old.csv"
    manifest.write_text(
        f"# root: {labelled.resolve()}\npath,label,split,sha256\n"
        + "".join(f"{it.relpath},{it.label},{it.split},{it.sha256}\n" for it in items)
    )
    root, back = read_manifest(manifest)
    assert (root, back) == (labelled.resolve(), items)


def test_a_hand_written_manifest_without_hashes_simply_works(tmp_path: Path) -> None:
    """``path,label,split`` beside the class folders: the root is the manifest's folder, the files are hashed
    on verify."""
    for seed, name in enumerate(("a", "b")):
        write_images(tmp_path / name, 3, 16, seed=seed)
    manifest = tmp_path / "mine.csv"
    manifest.write_text(
        "path,label,split\n"
        + "".join(f"{c}/img_{i:04d}.png,{c},{s}\n" for c in "ab" for i, s in enumerate(SPLITS))
    )
    root, items = read_manifest(manifest)
    assert root == tmp_path and len(items) == 6 and all(it.sha256 == "" for it in items)
    verify(items, root)


def test_a_class_folder_starting_with_a_hash_sign_is_kept(tmp_path: Path) -> None:
    """Rows starting with '#' used to be read as comments, silently dropping the class '#2'."""
    for seed, name in enumerate(("#2", "b")):
        write_images(tmp_path / "data" / name, 4, 16, seed=seed)
    leanmae.split(tmp_path / "data", classes="#2,b", out=tmp_path / "split.csv")
    _, items = read_manifest(tmp_path / "split.csv")
    assert counts(items)["train"] == {"#2": 2, "b": 2}


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a/x.png,a,train\na/x.png,a,train\n", "a/x.png is listed twice"),
        ("a/x.png,a,train\na/x.png,b,train\n", r"a/x.png is listed with two labels \(a, b\)"),
        ("a/x.png,a,train\na/x.png,a,test\n", "a/x.png is in both train and test"),
    ],
    ids=["duplicated-row", "two-labels", "two-splits"],
)
def test_a_hand_edited_manifest_listing_a_path_twice_is_refused(
    tmp_path: Path, rows: str, message: str
) -> None:
    manifest = tmp_path / "split.csv"
    manifest.write_text("path,label,split\nb/y.png,b,train\n" + rows)
    with pytest.raises(DataError, match=message):
        read_manifest(manifest)


def test_a_manifest_without_a_label_column_is_refused_naming_the_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "split.csv"
    manifest.write_text("file,class\na/x.png,a\n")
    with pytest.raises(DataError, match="lacks the column.*path, label, split"):
        read_manifest(manifest)


def test_the_same_image_in_two_classes_is_refused_by_split(tmp_path: Path) -> None:
    for seed, name in enumerate(("a", "b")):
        write_images(tmp_path / name, 4, 16, seed=seed)
    (tmp_path / "b" / "copy.png").write_bytes((tmp_path / "a" / "img_0001.png").read_bytes())
    with pytest.raises(
        DataError, match=r"a/img_0001.png \(a\) and .*b/copy.png \(b\) are the same image in two classes"
    ):
        make_split(tmp_path, ["a", "b"])


def test_drop_conflicts_leaves_every_copy_out_names_each_and_splits_the_rest_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for seed, name in enumerate(["a", "b"]):
        write_images(tmp_path / name, 4, 16, seed=seed)
    before = make_split(tmp_path, ["a", "b"], (0.5, 0.25, 0.25))
    (tmp_path / "b" / "copy.png").write_bytes((tmp_path / "a" / "img_0001.png").read_bytes())
    with pytest.raises(DataError, match="--drop-conflicts"):
        make_split(tmp_path, ["a", "b"], (0.5, 0.25, 0.25))
    kept = make_split(tmp_path, ["a", "b"], (0.5, 0.25, 0.25), drop_conflicts=True)
    out = capsys.readouterr().out
    assert "a/img_0001.png (a)" in out and "b/copy.png (b)" in out
    assert {it.relpath for it in kept} == {it.relpath for it in before} - {"a/img_0001.png"}
    assert [it for it in kept if it.label == "b"] == [it for it in before if it.label == "b"]
    assert (
        main(
            [
                "split",
                str(tmp_path),
                "--classes",
                "a,b",
                "--ratios",
                "0.5,0.25,0.25",
                "--out",
                str(tmp_path / "s.csv"),
                "--drop-conflicts",
            ]
        )
        == 0
    )
    assert "copy.png" not in (tmp_path / "s.csv").read_text()


def test_the_same_image_in_two_classes_of_a_manifest_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(tmp_path / "a", 1, 16)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "copy.png").write_bytes((tmp_path / "a" / "img_0000.png").read_bytes())
    manifest = tmp_path / "split.csv"
    manifest.write_text("path,label,split\na/img_0000.png,a,train\nb/copy.png,b,test\n")
    verify(*reversed(read_manifest(manifest)))
    assert "same image in two classes" in capsys.readouterr().err


def test_a_dangling_symlink_in_a_manifest_is_named(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    manifest = tmp_path / "split.csv"
    manifest.write_text("path,label,split\na/gone.png,a,train\n")
    with pytest.raises(DataError, match="gone.png.*dangling symbolic link"):
        verify(*reversed(read_manifest(manifest)))


def test_data_root_overrides_the_root_recorded_in_the_manifest(labelled: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "split.csv"
    write_manifest(make_split(labelled, list(SIZES)), manifest, labelled)
    root, _ = read_manifest(manifest, tmp_path / "moved")
    assert root == tmp_path / "moved"


def test_a_file_changed_after_the_split_is_detected(tmp_path: Path) -> None:
    for seed, name in enumerate(("a", "b")):
        write_images(tmp_path / "data" / name, 6, 16, seed=seed)
    items = make_split(tmp_path / "data", ["a", "b"])
    changed = next(it for it in items if it.split == "test")
    write_images(tmp_path / "other", 1, 16, seed=99)
    (tmp_path / "data" / changed.relpath).write_bytes((tmp_path / "other" / "img_0000.png").read_bytes())
    with pytest.raises(DataError, match=rf"{changed.relpath}.*content changed.*hash mismatch"):
        verify(items, tmp_path / "data")


def test_a_missing_file_is_detected(tmp_path: Path) -> None:
    for seed, name in enumerate(("a", "b")):
        write_images(tmp_path / name, 6, 16, seed=seed)
    items = make_split(tmp_path, ["a", "b"])
    (tmp_path / items[0].relpath).unlink()
    with pytest.raises(DataError, match="missing on disk"):
        verify(items, tmp_path)


def _manifest_with_path(path: Path, relpath: str) -> Path:
    path.write_text(
        f"# root: /data\npath,label,split,sha256\na/ok.png,a,train,{'0' * 64}\n{relpath},a,test,{'0' * 64}\n"
    )
    return path


@pytest.mark.parametrize("relpath", ["../outside/x.png", "a/../../x.png", "/etc/passwd"])
def test_a_manifest_path_leaving_the_data_root_is_refused(tmp_path: Path, relpath: str) -> None:
    with pytest.raises(DataError, match="leaves the data root"):
        read_manifest(_manifest_with_path(tmp_path / "split.csv", relpath))


def test_an_unknown_split_name_in_a_manifest_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "split.csv"
    manifest.write_text(f"path,label,split,sha256\na/x.png,a,training,{'0' * 64}\n")
    with pytest.raises(DataError, match="unknown split 'training'"):
        read_manifest(manifest)


def test_a_missing_manifest_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="leanmae split"):
        read_manifest(tmp_path / "nowhere.csv")


def test_an_empty_manifest_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "split.csv"
    manifest.write_text("path,label,split,sha256,root\n")
    with pytest.raises(DataError, match="no images"):
        read_manifest(manifest)


# --------------------------------------------------------------------------- leanmae.split and the CLI


def test_leanmae_split_writes_the_manifest_and_returns_the_counts(labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "split.csv"
    table = leanmae.split(labelled, classes="basophil, lymphocyte", out=out, ratios="0.6,0.2,0.2", seed=3)
    root, items = read_manifest(out)
    assert root == labelled.resolve()
    assert table == counts(items)
    assert {it.label for it in items} == {"basophil", "lymphocyte"}, "only the named classes"
    assert table["train"] == {"basophil": 30, "lymphocyte": 18}
    assert items == make_split(labelled, ["basophil", "lymphocyte"], (0.6, 0.2, 0.2), seed=3)


def test_leanmae_split_wants_three_ratios(labelled: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="three numbers"):
        leanmae.split(labelled, classes="basophil,lymphocyte", out=tmp_path / "split.csv", ratios="0.8,0.2")
    assert not (tmp_path / "split.csv").exists()


def test_cli_split_writes_the_manifest(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "split.csv"
    assert (
        main(
            [
                "split",
                str(labelled),
                "--classes",
                "basophil,lymphocyte,neutrophil",
                "--out",
                str(out),
                "--seed",
                "2",
            ]
        )
        == 0
    )
    assert "train 70; val 10; test 20" in capsys.readouterr().out
    _, items = read_manifest(out)
    assert items == make_split(labelled, list(SIZES), seed=2)


def test_split_never_overwrites_an_existing_manifest_without_overwrite(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "split.csv"
    out.write_text("my notes\n")
    assert main(["split", str(labelled), "--classes", "basophil,lymphocyte", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "my notes\n"
    assert (
        main(["split", str(labelled), "--classes", "basophil,lymphocyte", "--out", str(out), "--overwrite"])
        == 0
    )
    assert read_manifest(out)[1]


def test_split_out_that_is_a_folder_returns_2(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["split", str(labelled), "--classes", "basophil,lymphocyte", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_cli_split_with_a_misspelt_class_returns_2_and_suggests_the_folder(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            ["split", str(labelled), "--classes", "basophil,lymfocyte", "--out", str(tmp_path / "split.csv")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("leanmae split: error: ")
    assert "did you mean 'lymphocyte'?" in err and "Traceback" not in err
    assert not (tmp_path / "split.csv").exists()


# --------------------------------------------------------------------------- label fractions

# Train images per class of roughly the PBC data set's five WBC classes, plus a rare class.
PBC_TRAIN = {
    "basophil": 852,
    "eosinophil": 2182,
    "lymphocyte": 850,
    "monocyte": 994,
    "neutrophil": 2330,
    "rare": 5,
}
FRACTIONS = (0.01, 0.1, 0.5, 1.0)


@pytest.fixture(scope="module")
def pbc_like() -> list[Item]:
    """A manifest of PBC-like class counts (train as above, plus val and test images), built from Items
    directly."""
    items = []
    for label, n in PBC_TRAIN.items():
        for split, k in (("train", n), ("val", max(1, n // 7)), ("test", max(1, 2 * n // 7))):
            items += [Item(f"{label}/{split}_{i:05d}.jpg", label, split, "0" * 64) for i in range(k)]
    return items


def test_fractions_are_nested_for_a_seed(pbc_like: list[Item]) -> None:
    sets = [{it.relpath for it in label_fraction(pbc_like, f, seed=0)} for f in FRACTIONS]
    for smaller, larger, (f_small, f_large) in zip(
        sets, sets[1:], zip(FRACTIONS, FRACTIONS[1:], strict=False), strict=False
    ):
        assert smaller < larger, f"the {f_small:g} set is not inside the {f_large:g} set"


def test_a_fraction_takes_that_share_of_every_class(pbc_like: list[Item]) -> None:
    for fraction in FRACTIONS:
        per_class = Counter(it.label for it in label_fraction(pbc_like, fraction, seed=0))
        for label, n in PBC_TRAIN.items():
            expected = max(2, fraction * n)
            assert abs(per_class[label] - expected) <= 1, (
                f"{fraction:g}: {label} has {per_class[label]} of {n}, expected about {expected:g}"
            )


def test_one_percent_keeps_every_class_with_at_least_two_images(pbc_like: list[Item]) -> None:
    per_class = Counter(it.label for it in label_fraction(pbc_like, 0.01, seed=0))
    assert set(per_class) == set(PBC_TRAIN)
    assert min(per_class.values()) >= 2
    assert per_class["rare"] == 2, "5 images at 1 % is 0.05: rounded up to two, not dropped"


def test_a_class_with_a_single_training_image_keeps_it() -> None:
    items = [Item("a/0.png", "a", "train", "")] + [Item(f"b/{i}.png", "b", "train", "") for i in range(50)]
    per_class = Counter(it.label for it in label_fraction(items, 0.01, seed=0))
    assert per_class == {"a": 1, "b": 2}


def test_full_fraction_is_the_whole_train_split(pbc_like: list[Item]) -> None:
    chosen = label_fraction(pbc_like, 1.0, seed=4)
    assert sorted(it.relpath for it in chosen) == sorted(it.relpath for it in pbc_like if it.split == "train")


def test_fractions_only_ever_hold_training_images(pbc_like: list[Item]) -> None:
    for fraction in FRACTIONS:
        assert {it.split for it in label_fraction(pbc_like, fraction, seed=1)} == {"train"}


def test_different_seeds_draw_different_subsets_of_the_same_size(pbc_like: list[Item]) -> None:
    a = label_fraction(pbc_like, 0.1, seed=0)
    b = label_fraction(pbc_like, 0.1, seed=1)
    assert Counter(it.label for it in a) == Counter(it.label for it in b)
    assert {it.relpath for it in a} != {it.relpath for it in b}


def test_a_fraction_is_deterministic_and_independent_of_manifest_order(pbc_like: list[Item]) -> None:
    forward = {it.relpath for it in label_fraction(pbc_like, 0.1, seed=7)}
    assert {it.relpath for it in label_fraction(pbc_like, 0.1, seed=7)} == forward
    assert {it.relpath for it in label_fraction(list(reversed(pbc_like)), 0.1, seed=7)} == forward


def test_a_class_draw_does_not_depend_on_the_other_classes(pbc_like: list[Item]) -> None:
    """Adding or removing a class leaves every other class's labelled images unchanged."""
    without_rare = [it for it in pbc_like if it.label != "rare"]
    full = {it.relpath for it in label_fraction(pbc_like, 0.1, seed=0) if it.label != "rare"}
    assert {it.relpath for it in label_fraction(without_rare, 0.1, seed=0)} == full


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, 10.0])
def test_a_fraction_outside_0_1_is_refused(pbc_like: list[Item], fraction: float) -> None:
    with pytest.raises(DataError, match=r"must be in \(0, 1\]"):
        label_fraction(pbc_like, fraction, seed=0)


# --------------------------------------------------------------------------- label-honest validation draws


def test_label_honest_val_draws_are_nested_stratified_and_keep_two_per_class(pbc_like: list[Item]) -> None:
    """A run at fraction f sees f of the val labels too: the same nested, stratified draw as train, >= 2 per
    class."""
    sets = [label_fraction(pbc_like, f, seed=0, split="val") for f in FRACTIONS]
    for smaller, larger in zip(sets, sets[1:], strict=False):
        assert {it.relpath for it in smaller} < {it.relpath for it in larger}
    val_sizes = Counter(it.label for it in pbc_like if it.split == "val")
    for fraction, chosen in zip(FRACTIONS, sets, strict=True):
        assert {it.split for it in chosen} == {"val"}
        per_class = Counter(it.label for it in chosen)
        for label, n in val_sizes.items():
            assert per_class[label] == min(n, max(2, round(fraction * n))), f"{fraction:g}: {label}"
    assert len(sets[0]) == 2 + 3 + 2 + 2 + 3 + 1, (
        "at 1 %: two per class (three of 311 eosinophils and of 332 neutrophils; the rare class has one)"
    )


def test_label_fractions_never_draw_from_the_test_split(pbc_like: list[Item]) -> None:
    with pytest.raises(DataError, match="never from the test split"):
        label_fraction(pbc_like, 0.5, seed=0, split="test")
