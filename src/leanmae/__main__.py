"""``python -m leanmae`` (and ``torchrun -m leanmae``) runs the command line."""

import sys

from leanmae.cli import main

sys.exit(main())
