"""When to draw progress bars: only when asked for and only on a terminal.

Under nohup, SLURM or CI, stderr is a file, and a tqdm bar writes a carriage-return redraw for every
step (about 250 bytes each; some 340 KB for the cpu preset's 20 pretraining epochs). There the
engine's one plain line per epoch is the log, so bars are left out.
"""

from __future__ import annotations

import sys


def on_terminal() -> bool:
    """Whether stderr (where tqdm draws) is an interactive terminal."""
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def bar_disabled(wanted: bool) -> bool:
    """tqdm's ``disable``: True unless bars are ``wanted`` and stderr is a terminal."""
    return not (wanted and on_terminal())
