"""Pretrain the study's MAEs on a lent GPU inside a fixed time budget, then pack the results.

Four cpu-preset MAEs train at once on one GPU: pools "other" (PBC erythroblast / ig / platelet +
LC25000 lung, the seed's setting) and "in-domain" (the same plus the WBC train split, unlabelled)
x plain or per-patch-normalised pixel loss. A short calibration run (which also decodes the
caches) measures one epoch with four runs sharing the GPU; the epoch count is then set so the
cosine schedule completes inside the budget. Every run scores its frozen encoder on the split's
val images (kNN and linear probe) along the way.

    PYTHONPATH=src python3 docs/results/gpu-mae/run_gpu.py PACK_DIR OUT_DIR BUDGET_SECONDS [DEVICE]
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PACK, OUT, BUDGET = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
DEVICE = sys.argv[4] if len(sys.argv) > 4 else "cuda"
SPLIT = PACK / "pbc" / "split.csv"
OTHER = [f"{PACK}/pbc:erythroblast,ig,platelet", f"{PACK}/lc25000_lung"]
POOLS = {"other": OTHER, "in-domain": OTHER + [str(SPLIT)]}
LOSSES = {"pix": "false", "normpix": "true"}
WORK = Path("/tmp/leanmae-gpu")


def launch(pool: str, loss: str, folder: Path, epochs: int, probe_every: int) -> subprocess.Popen:
    warmup = max(1, round(0.05 * epochs))
    args = [
        sys.executable,
        "-m",
        "leanmae",
        "pretrain",
        "--out",
        str(folder),
        "--overwrite",
        "--preset",
        "cpu",
        "--device",
        DEVICE,
        "--no-progress",
    ]
    args += [a for source in POOLS[pool] for a in ("--data", source)]
    args += ["--epochs", str(epochs), "--probe", str(SPLIT)]
    for key_value in (
        f"model.norm_pix_loss={LOSSES[loss]}",
        "optim.batch_size=512",
        "optim.base_lr=7.5e-4",
        f"optim.warmup_epochs={warmup}",
        f"probe_every={probe_every}",
        "data.workers=4",
    ):
        args += ["--set", key_value]
    folder.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, stdout=open(f"{folder}.log", "w"), stderr=subprocess.STDOUT)


def rows(folder: Path) -> int:
    path = folder / "history.csv"
    return max(0, len(path.read_text().splitlines()) - 1) if path.exists() else 0


def main() -> None:
    runs = [(pool, loss) for pool in POOLS for loss in LOSSES]
    # Calibration: 4 epochs each, all four at once; time epochs 1 -> 3 as history.csv rows appear.
    folders = {r: WORK / "calibrate" / f"{r[0]}-{r[1]}" for r in runs}
    procs = {r: launch(*r, folders[r], 4, 100) for r in runs}
    seen: dict[tuple, dict[int, float]] = {r: {} for r in runs}
    while any(p.poll() is None for p in procs.values()):
        for r in runs:
            seen[r].setdefault(rows(folders[r]), time.time())
        time.sleep(0.1)
    for r, p in procs.items():
        if p.returncode:
            sys.exit(f"calibration run {r} failed: {Path(f'{folders[r]}.log').read_text()[-3000:]}")
    per_epoch = max((seen[r][3] - seen[r][1]) / 2 for r in runs)
    epochs = int(min(1000, max(20, BUDGET / per_epoch)))
    print(
        f"calibration: {per_epoch:.2f} s per epoch with {len(runs)} runs sharing the device "
        f"-> {epochs} epochs",
        flush=True,
    )

    started = time.time()
    finals = {r: OUT.parent / "runs" / f"{r[0]}-{r[1]}" for r in runs}
    procs = {r: launch(*r, finals[r], epochs, max(1, epochs // 20)) for r in runs}
    for r, p in procs.items():
        p.wait()
        print(f"{r}: exit {p.returncode} after {time.time() - started:.0f} s", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    for r, folder in finals.items():
        history = (
            list(csv.DictReader(open(folder / "history.csv"))) if (folder / "history.csv").exists() else []
        )
        if history:
            last = history[-1]
            print(
                f"{r}: epochs {len(history)}, val_loss {float(last['val_loss']):.4f}, "
                f"knn {last.get('knn_macro_f1')}, probe {last.get('probe_macro_f1')}"
            )
        with tarfile.open(OUT / f"{r[0]}-{r[1]}.tar.gz", "w:gz") as tar:
            tar.add(f"{folder}.log", arcname=f"{folder.name}/pretrain.log")
            for item in sorted(folder.iterdir()):
                if item.name not in ("checkpoints", "tensorboard"):
                    tar.add(item, arcname=f"{folder.name}/{item.name}")


if __name__ == "__main__":
    main()
