"""Settings of a post-training quantization run (`compress/quantize.py`); the calibration text's fields come from
`compress.common.calibration.CalibrationData` (the trainers' `run_clm.py` names)."""

from __future__ import annotations

from dataclasses import dataclass, field

METHODS = ("int8", "int4", "gptq", "awq")
BITS = {"int8": (8,), "int4": (4,), "gptq": (4, 8), "awq": (4, 8)}
FORMATS = ("auto", "compressed-tensors", "dequantized")


@dataclass
class QuantizeConfig:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Model to quantize (hub id or folder)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the quantized checkpoint is written."})
    method: str = field(default="int8", metadata={"help": "int8 or int4 (round-to-nearest), gptq or awq."})
    bits: int | None = field(default=None, metadata={"help": "Weight bits; default 8 for int8, else 4."})
    group_size: int | None = field(
        default=None, metadata={"help": "Input channels per scale; 0 or unset with 8 bits: one scale per output "
                                        "channel; default 128 for 4 bits."})
    format: str = field(
        default="auto", metadata={"help": "compressed-tensors (packed int codes + scales, needs compfair[quant]), "
                                          "dequantized (the rounded weights in a stock dense checkpoint), or auto: "
                                          "compressed-tensors where the architecture's layers are nn.Linear."})
    num_samples: int = field(default=128, metadata={"help": "Calibration blocks for gptq/awq, drawn with seed."})
    seed: int = field(default=0, metadata={"help": "Seed for drawing the calibration blocks."})
    calibration_batch_size: int = field(default=8, metadata={"help": "Blocks per forward pass."})
    blocksize: int = field(default=128, metadata={"help": "GPTQ: columns per lazy batch."})
    percdamp: float = field(default=0.01, metadata={"help": "GPTQ: damping, share of the mean Hessian diagonal."})
    dtype: str = field(default="float32", metadata={"help": "dtype the model is loaded in and saved in."})

    def __post_init__(self):
        if self.model_name_or_path is None:
            raise ValueError("model_name_or_path is required")
        if self.output_dir is None:
            raise ValueError("output_dir is required")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
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
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")

    @property
    def needs_calibration(self) -> bool:
        return self.method in ("gptq", "awq")

    @property
    def groups(self) -> int | None:
        return self.group_size or None
