"""Settings of a post-training quantization run (`compress/quantize.py`); the calibration text's fields come from
`compress.common.calibration.CalibrationData` (the trainers' `run_clm.py` names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from compress.common.post_training import PostTrainingConfig

METHODS = ("int8", "int4", "gptq", "awq")
BITS = {"int8": (8,), "int4": (4,), "gptq": (4, 8), "awq": (4, 8)}
FORMATS = ("auto", "compressed-tensors", "dequantized")


@dataclass
class QuantizeConfig(PostTrainingConfig):
    METHODS: ClassVar[tuple[str, ...]] = METHODS

    method: str = field(default="int8", metadata={"help": "int8 or int4 (round-to-nearest), gptq or awq."})
    bits: int | None = field(default=None, metadata={"help": "Weight bits; default 8 for int8, else 4."})
    group_size: int | None = field(
        default=None, metadata={"help": "Input channels per scale; 0 or unset with 8 bits: one scale per output "
                                        "channel; default 128 for 4 bits."})
    format: str = field(
        default="auto", metadata={"help": "compressed-tensors (packed int codes + scales, needs compfair[quant]), "
                                          "dequantized (the rounded weights in a stock dense checkpoint), or auto: "
                                          "compressed-tensors where the architecture's layers are nn.Linear."})

    def __post_init__(self):
        super().__post_init__()
        if self.bits is None:
            self.bits = 8 if self.method == "int8" else 4
        if self.bits not in BITS[self.method]:
            raise ValueError(f"bits={self.bits} is not supported by method {self.method} "
                             f"(supported: {', '.join(map(str, BITS[self.method]))})")
        if self.group_size is None:
            self.group_size = 0 if self.bits == 8 else 128
        if self.group_size < 0:
            raise ValueError(f"group_size must be 0 (per output channel) or positive, got {self.group_size}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("gptq", "awq")

    @property
    def groups(self) -> int | None:
        return self.group_size or None
