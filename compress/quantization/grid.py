"""The integer grid weights are rounded to: symmetric, per output channel or per group of input channels.

The convention is compressed-tensors' (the format the checkpoints are written in), so the scales computed
here are the ones its compressor stores and its decompressor multiplies back: scale = max|w| / ((2^b - 1) / 2),
q = clamp(round(w / scale), -2^(b-1), 2^(b-1) - 1), zero point 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Grid:
    bits: int
    group_size: int | None  # None: one scale per output channel (row)
    scale_dtype: torch.dtype = torch.float32  # the dtype scales are stored in; they are rounded to it first

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def group_width(self, in_features: int) -> int:
        return in_features if self.group_size is None else self.group_size

    def scales(self, w: torch.Tensor) -> torch.Tensor:
        """One scale per row of `w` (a group's columns): [rows]."""
        absmax = w.abs().amax(dim=1).clamp(min=1e-8)
        return (absmax / ((self.qmax - self.qmin) / 2)).to(self.scale_dtype).float()

    def quantize(self, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Integer codes (as float) of `w` [rows, cols] with per-row `scales`."""
        return torch.clamp(torch.round(w / scales.unsqueeze(1)), self.qmin, self.qmax)

    def fake_quantize(self, w: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return self.quantize(w, scales) * scales.unsqueeze(1)


def round_to_nearest(weight: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight, scales [out, groups]) of `weight` [out, in] rounded group by group."""
    out_features, in_features = weight.shape
    width = grid.group_width(in_features)
    result = torch.empty_like(weight, dtype=torch.float32)
    scales = []
    for start in range(0, in_features, width):
        part = weight[:, start:start + width].float()
        s = grid.scales(part)
        result[:, start:start + width] = grid.fake_quantize(part, s)
        scales.append(s)
    return result, torch.stack(scales, dim=1)


def check_group_size(grid: Grid, in_features: int, layer: str) -> None:
    if grid.group_size is not None and in_features % grid.group_size:
        raise ValueError(f"group_size={grid.group_size} does not divide the {in_features} input features of {layer}")
