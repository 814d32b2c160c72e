"""Results are never half-written: every file is written beside its target, then renamed over it.

A run killed mid-write leaves the previous file (or none), never a truncated one, and the stages
that skip finished work (`compress.study`) can trust that a file which exists is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; on success rename it to `path`, on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: str | Path, data: str | bytes) -> None:
    with replaced_atomically(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomically(path: str | Path, payload, sort_keys: bool = False) -> None:
    write_atomically(path, json.dumps(payload, indent=2, sort_keys=sort_keys) + "\n")
