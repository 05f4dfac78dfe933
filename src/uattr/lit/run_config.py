"""Run configuration files that include others: ``include:`` and ``${config_name}``.

An experiment config under ``configs/`` holds only what differs from the overlays it includes::

    include: [trainer/default.yaml, callbacks/probes.yaml]   # paths relative to this file
    trainer:
      max_epochs: 15
      callbacks+: [...]     # appends to the included callbacks; `callbacks:` would replace them
    model: ...

``python train.py fit --config FILE`` applies FILE's includes first, in order (each expanded
likewise), then FILE itself: exactly ``--config INCLUDE_1 ... --config FILE``, so jsonargparse's
rules hold (later values win, ``key+:`` appends to a list). In every string of FILE and of its
includes, ``${config_name}`` becomes FILE's name without ``.yaml``, so one shared overlay gives each
experiment its own log and checkpoint folders. ``--print_config`` and the configuration saved in
checkpoints are the result, without ``include``. See ``docs/configs.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, get_loader

__all__ = ["CONFIG_NAME", "INCLUDE_KEY", "ConfigFileWithIncludes", "expand_includes",
           "load_run_config"]

#: Top-level key naming the config files (relative to this one) applied before it, in order.
INCLUDE_KEY = "include"
#: Replaced in every string by the name (file stem) of the config file given to ``--config``.
CONFIG_NAME = "${config_name}"


def expand_includes(path: str | Path, load: Callable[[str], Any] = yaml.safe_load,
                    name: str | None = None,
                    chain: tuple[Path, ...] = ()) -> list[tuple[Path, Any]]:
    """The config file ``path`` as (file, content) pairs to apply in order: its includes
    (expanded likewise), then itself without :data:`INCLUDE_KEY`; :data:`CONFIG_NAME` replaced
    by ``name`` (default: the file's stem). ``load`` parses YAML text."""
    path = Path(path).resolve()
    if path in chain:
        raise ValueError(f"`{INCLUDE_KEY}` cycle: {' -> '.join(str(p) for p in (*chain, path))}.")
    if not path.is_file():
        raise ValueError(f"no config file at {path}" + (f", included by {chain[-1]}." if chain
                                                         else "."))
    content = load(path.read_text())
    name = name or path.stem
    includes = content.pop(INCLUDE_KEY, []) if isinstance(content, dict) else []
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ValueError(f"{path}: `{INCLUDE_KEY}` must be a path or a list of paths (relative "
                         f"to that file), got {includes!r}.")
    parts = [part for include in includes
             for part in expand_includes(path.parent / include, load, name, (*chain, path))]
    return [*parts, (path, _with_config_name(content, name))]


def _with_config_name(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return value.replace(CONFIG_NAME, name)
    if isinstance(value, dict):
        return {key: _with_config_name(item, name) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_config_name(item, name) for item in value]
    return value


def _merge(base: Any, update: Any) -> Any:
    """``update`` over ``base`` as jsonargparse merges config files: mappings key by key (a new
    ``class_path`` drops the old ``init_args``), lists replaced, ``key+`` appended."""
    if not (isinstance(base, dict) and isinstance(update, dict)):
        return update
    if "class_path" in update and update["class_path"] != base.get("class_path"):
        return update
    merged = dict(base)
    for key, value in update.items():
        if key.endswith("+"):
            key, value = key[:-1], (merged.get(key[:-1]) or []) + (
                value if isinstance(value, list) else [value])
        merged[key] = _merge(merged[key], value) if key in merged else value
    return merged


def load_run_config(path: str | Path) -> dict[str, Any]:
    """The run configuration in the YAML file ``path``, its includes applied (for code that
    reads a config without the CLI, e.g. to rebuild a run's model and data)."""
    config: dict[str, Any] = {}
    for _, part in expand_includes(path):
        config = _merge(config, part)
    return config


class ConfigFileWithIncludes(ActionConfigFile):
    """``--config FILE`` where FILE may have :data:`INCLUDE_KEY` and :data:`CONFIG_NAME`; a file
    with neither is read by jsonargparse itself."""

    @staticmethod
    def apply_config(parser: Any, cfg: Any, dest: str, value: Any) -> None:
        path = Path(str(value))
        if not path.is_file() or (INCLUDE_KEY not in (text := path.read_text())
                                  and CONFIG_NAME not in text):
            ActionConfigFile.apply_config(parser, cfg, dest, value)
            return
        try:  # TypeError: what jsonargparse reports as a usage error
            parts = expand_includes(path, get_loader(parser.parser_mode))
        except ValueError as error:
            raise TypeError(str(error)) from error
        for source, part in parts:
            try:
                ActionConfigFile.apply_config(parser, cfg, dest,
                                              yaml.safe_dump(part, sort_keys=False))
            except (TypeError, ValueError) as error:
                raise TypeError(f"in {source}: {error}") from error
