"""GPTQ and AWQ on one linear layer's weight as [out_features, in_features].

- GPTQ (Frantar et al. 2023): quantize columns one at a time, spreading each column's rounding error over the
  columns not yet quantized through the inverse Hessian of the layer's inputs (lazy batches of `blocksize`
  columns, Cholesky form, group scales computed when the sweep reaches the group, as the reference does).
- AWQ (Lin et al. 2024): scale input channel j of the weights up by s_j = mean|x_j|^alpha (and the input down
  by the same, folded into the operation that produces it), with alpha picked on a grid to minimise the output
  error of the rounded weights on the calibration inputs; then round to nearest.
"""

from __future__ import annotations

import torch

from compress.common.calibration import inverse_hessian_factor
from compress.quantization.grid import Grid, round_to_nearest


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, grid: Grid, blocksize: int = 128,
                  percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """(dequantized weight, scales [out, groups])."""
    w = weight.clone().float()
    rows, cols = w.shape
    width = grid.group_width(cols)
    if width < cols:  # groups never straddle a lazy batch, so a group's scales see its updated columns
        blocksize = max(width, blocksize // width * width)
    else:
        blocksize = cols  # one scale per row, from the whole (not yet updated) row, as the reference does
    hinv, dead = inverse_hessian_factor(hessian, percdamp)
    w[:, dead] = 0
    q_all = torch.zeros_like(w)
    scales = []
    current = None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            if (i1 + i) % width == 0:
                current = grid.scales(w1[:, i:i + width])
                scales.append(current)
            col = w1[:, i]
            q = grid.fake_quantize(col.unsqueeze(1), current).squeeze(1)
            err = (col - q) / h1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ h1[i, i:].unsqueeze(0)
            q_all[:, i1 + i] = q
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q_all, torch.stack(scales, dim=1)


AWQ_GRID = 20


@torch.no_grad()
def awq_search(weights: list[torch.Tensor], inputs: torch.Tensor, mean_abs: torch.Tensor, grid: Grid,
               n_grid: int = AWQ_GRID) -> tuple[torch.Tensor, float, float]:
    """The per-input-channel scale s for linear layers that share `inputs` [tokens, in] (stacked weights
    [out_k, in]), minimising || X W^T - (X / s) Q(W s)^T ||^2 over alpha in {0, 1/n, ..., (n-1)/n}.

    Returns (s, best alpha, its error relative to alpha = 0, which is plain round-to-nearest).
    """
    stacked = torch.cat(weights, 0).float()
    x = inputs.float()
    reference = x @ stacked.t()
    best = (None, None, float("inf"))
    baseline = None
    for k in range(n_grid):
        alpha = k / n_grid
        s = mean_abs.clamp(min=1e-4).pow(alpha)
        s = s / (s.max() * s.min()).sqrt()  # as the reference: keeps the scales centred around 1
        quantized, _ = round_to_nearest(stacked * s.unsqueeze(0), grid)
        error = ((x / s.unsqueeze(0)) @ quantized.t() - reference).pow(2).mean().item()
        if baseline is None:
            baseline = error
        if error < best[2]:
            best = (s, alpha, error)
    return best[0], best[1], best[2] / baseline if baseline else 1.0
