"""leanmae: how many labelled images do we need, and does MAE pretraining on our own images cut that number?

Every command of the ``leanmae`` CLI is a function here with the same options. They are imported
on first use, so that ``leanmae --help`` does not wait for torch and transformers to load.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_COMMANDS = {
    "demo": "leanmae.commands.demo",
    "evaluate": "leanmae.commands.evaluate",
    "finetune": "leanmae.commands.finetune",
    "predict": "leanmae.commands.evaluate",
    "pretrain": "leanmae.commands.pretrain",
    "reconstruct": "leanmae.commands.reconstruct",
    "split": "leanmae.commands.evaluate",
    "study": "leanmae.commands.study",
    "report": "leanmae.reporting.study_report",
}
__all__ = [*_COMMANDS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _COMMANDS:
        return getattr(import_module(_COMMANDS[name]), name)
    raise AttributeError(f"module 'leanmae' has no attribute {name!r}")
