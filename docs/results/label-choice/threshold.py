"""How much FixMatch's threshold lets through at the end of a run, measured on PBC's validation images (the
same distribution as the unlabelled train images FixMatch reads): the share whose top softmax probability
passes 0.874 (0.95 scaled by the label-smoothed top value, 0.92) and the accuracy of those, per run. It
reads the run folders (runs/label-choice/*/evaluate-val/predictions.csv), which are not committed.

    python docs/results/label-choice/threshold.py [RUNS]
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

THRESHOLD = 0.95 * (0.9 + 0.1 / 5)

for predictions in sorted(
    Path(sys.argv[1] if len(sys.argv) > 1 else "runs/label-choice").glob("*/evaluate-val/predictions.csv")
):
    with open(predictions) as f:
        rows = list(csv.DictReader(f))
    passing = [r["true_label"] == r["predicted_label"] for r in rows if float(r["confidence"]) >= THRESHOLD]
    print(
        f"{predictions.parent.parent.name:36} passes {len(passing) / len(rows):.2f}, "
        f"of which correct {sum(passing) / max(1, len(passing)):.3f}"
    )
