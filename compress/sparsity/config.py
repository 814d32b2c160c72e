"""Settings of a post-training sparsity run (`compress/sparsify.py`); the calibration text's fields come from
`compress.common.calibration.CalibrationData` (the trainers' `run_clm.py` names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from compress.common.post_training import PostTrainingConfig
from compress.sparsity.masks import parse_pattern

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclass
class SparsityConfig(PostTrainingConfig):
    METHODS: ClassVar[tuple[str, ...]] = METHODS

    method: str = field(default="wanda", metadata={"help": "magnitude, wanda or sparsegpt."})
    sparsity: float | None = field(
        default=None, metadata={"help": "Share of zeros in every linear layer, in (0, 1) (unstructured)."})
    pattern: str | None = field(
        default=None, metadata={"help": "N:M, e.g. 2:4 (N zeros in every group of M inputs); instead of sparsity."})

    def __post_init__(self):
        super().__post_init__()
        if (self.sparsity is None) == (self.pattern in (None, "", "unstructured")):
            raise ValueError("give exactly one of sparsity (unstructured, e.g. 0.5) and pattern (N:M, e.g. 2:4)")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise ValueError(f"sparsity must be in (0, 1), got {self.sparsity}")
        self.n_m = parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"
