"""Pack the images a GPU pretraining needs into a folder small enough to send to a lent GPU machine.

The device tool sends at most 64 MiB, so each image is decoded and resized exactly as leanmae's
cache does (centre square, bicubic to the cpu preset's 80 px working size) and stored as JPEG
(quality 85): on the GPU the cache then decodes these at their own size, with no second resize.
Only what pretraining and its probe may see is packed: the PBC non-WBC classes, the LC25000 lung
tiles, and the WBC train and val images of the study's split (never its test images). A new
manifest with the packed files' hashes lists the WBC train and val images.

    python docs/results/gpu-mae/pack.py ../shared/data SPLIT.csv PACK_DIR
"""

from __future__ import annotations

import csv
import hashlib
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from leanmae.data.decode import decode_rgb, square_resize
from leanmae.data.sources import scan
from leanmae.data.split import read_manifest

SIZE, QUALITY = 80, 85


def pack_one(job: tuple[str, str]) -> str:
    src, dst = job
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(square_resize(decode_rgb(src), SIZE)).save(dst, "JPEG", quality=QUALITY)
    return hashlib.sha256(Path(dst).read_bytes()).hexdigest()


def main(data: Path, split: Path, pack: Path) -> None:
    root, items = read_manifest(split)
    kept = [it for it in items if it.split in ("train", "val")]
    jobs = [(str(root / it.relpath), str(pack / "pbc" / Path(it.relpath).with_suffix(".jpg"))) for it in kept]
    for rec in scan(data / "pbc", ["erythroblast", "ig", "platelet"]) + scan(data / "lc25000_lung"):
        jobs.append((str(rec.path), str(pack / rec.path.parent.relative_to(data) / (rec.path.stem + ".jpg"))))
    with ProcessPoolExecutor(2) as pool:
        hashes = list(pool.map(pack_one, jobs, chunksize=64))
    with open(pack / "pbc" / "split.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "sha256"])
        writer.writerows(
            [str(Path(it.relpath).with_suffix(".jpg")), it.label, it.split, h]
            for it, h in zip(kept, hashes, strict=False)
        )
    print(f"packed {len(jobs)} images ({len(kept)} WBC train/val) into {pack}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
