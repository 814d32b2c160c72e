"""What quantization and sparsity jobs share: loading the model with its config checked first, the byte counts
of a checkpoint's linear weights, and writing the output folder whole, with its record last.
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from compress.common.atomic_files import write_json_atomically
from compress.common.checkpoint_files import folder_files, model_files_bytes, safetensors_tensor_bytes


@dataclass
class PostTrainingConfig:
    """The settings every quantization and sparsity run has (the model, the output, calibration and the layer-wise
    solvers' knobs); `QuantizeConfig` and `SparsityConfig` add their method's fields and checks."""

    METHODS: ClassVar[tuple[str, ...]] = ()

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model to compress (hub id or folder)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the compressed checkpoint is written."})
    num_samples: int = field(default=128, metadata={"help": "Calibration blocks, drawn with seed."})
    seed: int = field(default=0, metadata={"help": "Seed for drawing the calibration blocks."})
    calibration_batch_size: int = field(default=8, metadata={"help": "Blocks per forward pass."})
    blocksize: int = field(default=128, metadata={"help": "GPTQ / SparseGPT: columns per lazy batch."})
    percdamp: float = field(default=0.01, metadata={"help": "GPTQ / SparseGPT: damping, share of the mean Hessian "
                                                             "diagonal."})
    dtype: str = field(default="float32", metadata={"help": "dtype the model is loaded, compressed and saved in."})

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required")
        if self.output_dir is None:
            raise ValueError("output_dir is required")
        if self.method not in self.METHODS:
            raise ValueError(f"method must be one of {', '.join(self.METHODS)}, got {self.method!r}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")


def first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def load_config(name: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name)
    except Exception as err:  # missing folder, no network, not a transformers model
        raise SystemExit(f"error: cannot load model {name!r}: {first_line(err)}") from None


def load_model_and_tokenizer(name: str, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(name)
    return model, tokenizer


def version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def linear_weight_bytes(folder: str | Path, linear_names: list[str]) -> int:
    """Bytes on disk of the given linear layers' weights and everything stored for them (packed codes, scales,
    zero points, shapes), read from the safetensors headers; biases are not weights and are left out."""
    sizes = safetensors_tensor_bytes(folder)
    total = 0
    for tensor, size in sizes.items():
        module, _, leaf = tensor.rpartition(".")
        if module in linear_names and leaf.startswith("weight"):
            total += size
    return total


def size_record(source: str, out_dir: Path, linear_names: list[str], record_file: str) -> dict:
    """Bytes before (the source folder, where it is local) and after (this folder, every file but the record)."""
    files = folder_files(out_dir, exclude=(record_file,))
    record = {"files": files, "checkpoint_bytes": sum(files.values()),
              "model_files_bytes": model_files_bytes(out_dir),
              "linear_weight_bytes": linear_weight_bytes(out_dir, linear_names)}
    source_dir = Path(source)
    if source_dir.is_dir():
        record["source_model_files_bytes"] = model_files_bytes(source_dir)
        record["source_linear_weight_bytes"] = linear_weight_bytes(source_dir, linear_names)
    return record


def write_record(out_dir: Path, record_file: str, record: dict) -> None:
    record = {**record, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json_atomically(out_dir / record_file, record)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
