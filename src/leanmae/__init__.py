"""leanmae: how many labelled images do we need, and does MAE pretraining on our own images cut that number?

Every command of the ``leanmae`` CLI is a function here with the same options; ``help(leanmae.NAME)``
lists them. They are imported on first use, so that ``leanmae --help`` does not wait for torch and
transformers to load.
"""

import inspect as _inspect
from importlib import import_module as _import_module
from typing import Any as _Any

__version__ = "0.1.0"

_COMMANDS = {
    "adapt": "leanmae.commands.adapt",
    "demo": "leanmae.commands.demo",
    "evaluate": "leanmae.commands.evaluate",
    "export": "leanmae.commands.export",
    "finetune": "leanmae.commands.finetune",
    "predict": "leanmae.commands.predict",
    "pretrain": "leanmae.commands.pretrain",
    "reconstruct": "leanmae.commands.reconstruct",
    "select": "leanmae.commands.select",
    "show_config": "leanmae.commands.config_show",
    "split": "leanmae.commands.split",
    "study": "leanmae.commands.study",
    "report": "leanmae.reporting.study_report",
}
__all__ = [*_COMMANDS, "__version__"]


def _documented(name: str, func: _Any) -> _Any:
    """Give a command's function the "Options" of its CLI command, unless its docstring lists them already."""
    if "Options" not in (func.__doc__ or "") and name != "show_config":
        from leanmae.cli import options_doc

        section = options_doc(name, list(_inspect.signature(func).parameters))
        if section:
            func.__doc__ = f"{_inspect.cleandoc(func.__doc__ or '')}\n\n{section}\n"
    return func


def __getattr__(name: str) -> _Any:
    if name in _COMMANDS:
        return _documented(name, getattr(_import_module(_COMMANDS[name]), name))
    raise AttributeError(f"module 'leanmae' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The commands are loaded lazily, so list them for ``dir(leanmae)`` and tab completion."""
    return sorted({*globals(), *__all__})
