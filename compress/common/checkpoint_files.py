"""Sizes of what a checkpoint holds on disk, and building a checkpoint folder so that it appears whole or not at all.

Byte counts come from the files themselves: a folder's files by `stat`, and each safetensors tensor's bytes
from the file's header (its `data_offsets`), so a record's numbers can be checked against the disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from pathlib import Path


def folder_files(folder: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, int]:
    """{relative path: bytes} of every file under `folder`, except names in `exclude`."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in exclude}


def safetensors_tensor_bytes(folder: str | Path) -> dict[str, int]:
    """{tensor name: bytes of its data} over every *.safetensors file in `folder`, read from the headers."""
    sizes = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                start, end = entry["data_offsets"]
                sizes[name] = end - start
    return sizes


def model_files_bytes(folder: str | Path) -> int:
    """Bytes of a model folder's weights and config (what `from_pretrained` reads), not tokenizer or records."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name in ("config.json",
                                                                                   "generation_config.json")))


@contextlib.contextmanager
def building_folder(out_dir: str | Path):
    """Yield a fresh sibling folder to write into; on success it replaces `out_dir`. A folder left by an
    interrupted run is removed first, so a rerun starts cleanly."""
    out_dir = Path(out_dir)
    building = out_dir.with_name(out_dir.name + ".partial")
    if building.exists():
        shutil.rmtree(building)
    building.mkdir(parents=True)
    yield building
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(building, out_dir)
