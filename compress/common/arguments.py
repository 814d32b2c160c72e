"""Command-line parsing shared by the trainers: a YAML (or JSON) config file, then `--field value` flags.

The convention is Hugging Face's (`HfArgumentParser` dataclasses, as in `run_clm.py`) with TRL's
twist: the config file supplies defaults and any flag on the command line overrides it, so
`compress/distill.py trainer_configs/distill/A.yaml --learning_rate 1e-4` works. A key the
dataclasses do not know is an error naming the key, not a silent typo.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: config file {path} not found")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}  # JSON is a subset of YAML
    except yaml.YAMLError as err:
        raise SystemExit(f"error: {path} is not valid YAML/JSON: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise SystemExit(f"error: {path} must hold a mapping of field: value, not a {type(config).__name__}")
    return config


def parse_config_and_flags(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """Parse `[CONFIG.yaml] [--field value ...]` into one instance of each dataclass type."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    if argv and argv[0].endswith(CONFIG_SUFFIXES):
        config_path = argv.pop(0)
        config = read_config_file(config_path)
        known = {f.name for cls in dataclass_types for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(config) - known)
        if unknown:
            raise SystemExit(f"error: {config_path}: unknown config key(s): {', '.join(unknown)} "
                             "(run with --help to list the fields)")
        # The file's values become argparse defaults, so flags given after it override them.
        for action in parser._actions:
            if action.dest in config:
                action.required = False
        parser.set_defaults(**config)
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # raised for unknown flags and invalid field values
        raise SystemExit(f"error: {err}") from None
