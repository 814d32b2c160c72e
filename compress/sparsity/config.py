"""Settings of a post-training sparsity run (`compress/sparsify.py`); the calibration text's fields come from
`compress.common.calibration.CalibrationData` (the trainers' `run_clm.py` names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.sparsity.masks import parse_pattern

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass
class SparsityConfig:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Model to sparsify (hub id or folder)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the sparse checkpoint is written."})
    method: str = field(default="wanda", metadata={"help": "magnitude, wanda or sparsegpt."})
    sparsity: float | None = field(
        default=None, metadata={"help": "Share of zeros in every linear layer, in (0, 1) (unstructured)."})
    pattern: str | None = field(
        default=None, metadata={"help": "N:M, e.g. 2:4 (N zeros in every group of M inputs); instead of sparsity."})
    num_samples: int = field(default=128, metadata={"help": "Calibration blocks, drawn with seed."})
    seed: int = field(default=0, metadata={"help": "Seed for drawing the calibration blocks."})
    calibration_batch_size: int = field(default=8, metadata={"help": "Blocks per forward pass."})
    blocksize: int = field(default=128, metadata={"help": "SparseGPT: columns per lazy batch."})
    percdamp: float = field(default=0.01, metadata={"help": "SparseGPT: damping, share of the mean Hessian diagonal."})
    dtype: str = field(default="float32", metadata={"help": "dtype the model is loaded, compressed and saved in."})

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required")
        if self.output_dir is None:
            raise ValueError("output_dir is required")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if (self.sparsity is None) == (self.pattern in (None, "", "unstructured")):
            raise ValueError("give exactly one of sparsity (unstructured, e.g. 0.5) and pattern (N:M, e.g. 2:4)")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        self.n_m = parse_pattern(self.pattern)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"
