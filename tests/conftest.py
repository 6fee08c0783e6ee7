"""Shared fixtures: an isolated cache, small image folders, and the real data when present.

Nothing a test does is written to the home folder or into the repository: ``LEANMAE_CACHE`` points
at a per-session temporary folder and every run writes under ``tmp_path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers import copy_subset, write_images

# Runs inside the test process and runs launched as child processes (studies, torchrun) must use the
# same number of torch threads: reductions split differently otherwise, and bit-identical
# comparisons between them would fail for float rounding rather than for a real difference.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# --------------------------------------------------------------------------- isolation


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One decode cache for the whole session (cache entries are keyed by content, so sharing is safe)."""
    return tmp_path_factory.mktemp("leanmae-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(session_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test (and every subprocess it starts with os.environ) caches under tmp, never in ~/.cache."""
    monkeypatch.setenv("LEANMAE_CACHE", str(session_cache))
    return session_cache


@pytest.fixture(scope="session")
def hf_modules_under_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """transformers copies a model folder's code (``trust_remote_code=True``) into its modules cache: keep
    that out of the home folder, and never wait for an interactive "run this code?" prompt."""
    import transformers.dynamic_module_utils as dynamic_modules  # here: collecting the tests needs no torch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf-modules")))
        patch.setattr(dynamic_modules, "TIME_OUT_REMOTE_CODE", 0)
        yield


# --------------------------------------------------------------------------- images


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """24 small (48 px) RGB PNGs in a flat folder."""
    folder = tmp_path / "images"
    write_images(folder, 24, 48)
    return folder


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests that need real images skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pbc_dir(shared_data: Path) -> Path:
    """The PBC blood-cell folder (one subfolder per class)."""
    folder = shared_data / "pbc"
    if not folder.is_dir():
        pytest.skip(f"real data not available: {folder} is absent")
    return folder


@pytest.fixture(scope="session")
def lc25000_dir(shared_data: Path) -> Path:
    """The LC25000 lung tiles (224 px)."""
    folder = shared_data / "lc25000_lung"
    if not folder.is_dir():
        pytest.skip(f"real data not available: {folder} is absent")
    return folder


@pytest.fixture
def pbc_subset(pbc_dir: Path, tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``pbc_subset(["platelet"], 30)`` -> a tmp folder with copies of 30 platelet images."""

    def make(classes: list[str], per_class: int) -> Path:
        return copy_subset(pbc_dir, tmp_path / "pbc-subset", classes, per_class)

    return make
