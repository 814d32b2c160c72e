"""Which weights each sparsity method zeroes, on one linear layer's weight as [out_features, in_features].

- magnitude: the smallest |W| in the whole layer (unstructured) or in each group of M inputs (N:M);
- Wanda (Sun et al. 2024): score |W_ij| * ||X_j||_2, the smallest per output row (unstructured, as the paper
  compares weights within each row) or per group of M inputs;
- SparseGPT (Frantar & Alistarh 2023): OBS-style pruning with the inverse Hessian of the layer's inputs,
  updating the remaining weights to compensate, one block of columns at a time.

N:M means N zeros in every group of M consecutive input weights of a row (the reference implementations'
`prune_n`/`prune_m`; for 2:4 that is also 2 non-zeros).
"""

from __future__ import annotations

import torch

from compress.common.calibration import inverse_hessian_factor


def parse_pattern(pattern: str | None) -> tuple[int, int] | None:
    """'2:4' -> (2, 4); one-line error for anything else or N >= M."""
    if pattern in (None, "", "unstructured"):
        return None
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except ValueError:
        raise ValueError(f"pattern must be N:M (e.g. 2:4) or unstructured, got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"pattern {pattern}: need 0 < N < M (N zeros in every group of M)")
    return n, m


def _smallest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the `count` smallest entries of each row of `scores`."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        mask.scatter_(1, torch.topk(scores, count, dim=1, largest=False).indices, True)
    return mask


def n_m_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N smallest scores in every group of M consecutive columns."""
    rows, cols = scores.shape
    groups = scores.reshape(rows * cols // m, m)
    return _smallest(groups, n).reshape(rows, cols)


def magnitude_mask(weight: torch.Tensor, sparsity: float | None, pattern: tuple[int, int] | None) -> torch.Tensor:
    scores = weight.abs()
    if pattern:
        return n_m_mask(scores, *pattern)
    count = int(weight.numel() * sparsity)
    return _smallest(scores.reshape(1, -1), count).reshape(weight.shape)


def wanda_mask(weight: torch.Tensor, input_norms: torch.Tensor, sparsity: float | None,
               pattern: tuple[int, int] | None) -> torch.Tensor:
    scores = weight.abs() * input_norms.reshape(1, -1)
    if pattern:
        return n_m_mask(scores, *pattern)
    return _smallest(scores, int(weight.shape[1] * sparsity))


@torch.no_grad()
def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float | None,
                    pattern: tuple[int, int] | None, blocksize: int = 128, percdamp: float = 0.01) -> torch.Tensor:
    """The pruned, error-compensated weight (SparseGPT's Algorithm 1 without quantization).

    Unstructured: in each block of `blocksize` columns, the block's `sparsity` share of weights with the least
    w^2 / [H^-1]_jj^2 is pruned (the reference's adaptive mask selection per block). N:M: the choice is made
    per group of M columns when the sweep reaches it, so it sees the updates from the columns before.
    """
    w = weight.clone().float()
    rows, cols = w.shape
    if pattern:
        blocksize = max(pattern[1], blocksize // pattern[1] * pattern[1])
    hinv, dead = inverse_hessian_factor(hessian, percdamp)
    w[:, dead] = 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        d = torch.diag(h1)
        if pattern:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        else:
            scores = (w1 ** 2 / d.reshape(1, -1) ** 2).reshape(1, -1)
            mask1 = _smallest(scores, int(w1.numel() * sparsity)).reshape(w1.shape)
        for i in range(i2 - i1):
            if pattern and i % pattern[1] == 0:
                n, m = pattern
                scores = w1[:, i:i + m] ** 2 / d[i:i + m].reshape(1, -1) ** 2
                mask1[:, i:i + m] = _smallest(scores, n)
            col = w1[:, i]
            pruned = torch.where(mask1[:, i], torch.zeros_like(col), col)
            err = (col - pruned) / h1[i, i]
            w1[:, i:] -= err.unsqueeze(1) @ h1[i, i:].unsqueeze(0)
            w1[:, i] = pruned
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w
