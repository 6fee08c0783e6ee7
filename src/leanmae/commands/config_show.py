"""``leanmae config show COMMAND``: the configuration a command would run with, before it runs.

The layers (defaults <- preset <- ``--config`` file <- ``--set``) are resolved exactly as the
command resolves them, so a typo fails here with the same message, and the YAML printed can be
saved and passed back with ``--config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from leanmae.config import FinetuneConfig, PretrainConfig, StudyConfig, build, load_yaml, resolve, to_dict
from leanmae.errors import ConfigError

RUN_CONFIGS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def show_config(
    command: str,
    preset: str | None = None,
    config: str | Path | None = None,
    set: list[str] | tuple[str, ...] = (),
    echo: bool = True,
) -> dict[str, Any]:
    """The resolved config of ``command`` as a nested dict, printed as YAML unless ``echo`` is False.

    Options:
        command: pretrain, finetune or study.
        preset: shipped preset (default cpu for pretrain and finetune; a study's is its own key).
        config: YAML file, as the command takes it.
        set: ``KEY=VALUE`` overrides; for a study they are the overrides its runs get.
        echo: print the YAML (default True).
    """
    if command in RUN_CONFIGS:
        resolved = to_dict(resolve(RUN_CONFIGS[command], command, preset or "cpu", config, {}, set))
    elif command == "study":
        given = {k: v for k, v in {"preset": preset, "set": list(set) or None}.items() if v is not None}
        resolved = to_dict(build(StudyConfig, [load_yaml(config) if config else {}, given]))
    else:
        raise ConfigError(f"config show {command!r}: use pretrain, finetune or study")
    if echo:
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return resolved
