"""Calibration for post-training compression: text -> batches of token blocks, and the statistics of a linear
layer's inputs that GPTQ, AWQ, Wanda and SparseGPT read (X^T X, per-channel norms, the inputs themselves).

The text comes through `lm_data` (the trainers' loader, `run_clm.py` field names), so a calibration set is
named the way a training set is: `train_file` or `dataset_name`, `block_size`, and a number of blocks drawn
with a seed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from compress.common.lm_data import DataArguments, build_lm_datasets, sample_blocks


@dataclass
class CalibrationData(DataArguments):
    """`DataArguments` where no data is allowed (magnitude pruning and round-to-nearest need none); a method
    that needs calibration checks `has_data` and says so."""

    def __post_init__(self):
        if self.dataset_name is None and self.train_file is None:
            return
        super().__post_init__()

    @property
    def has_data(self) -> bool:
        return self.dataset_name is not None or self.train_file is not None

    def source(self) -> str | None:
        return self.train_file or (f"{self.dataset_name}" + (f"/{self.dataset_config_name}"
                                                            if self.dataset_config_name else "")
                                   if self.dataset_name else None)


def calibration_blocks(data: CalibrationData, tokenizer, num_samples: int, seed: int) -> torch.Tensor:
    """`num_samples` packed training blocks drawn with `seed`, as a [num_samples, block_size] LongTensor.

    One-line error when the text gives fewer blocks than requested.
    """
    if not data.has_data:
        raise SystemExit("error: this method needs calibration text: set train_file (a .txt/.jsonl file) "
                         "or dataset_name")
    packed = build_lm_datasets(data, tokenizer, seed=seed)
    train = packed["train"]
    if len(train) < num_samples:
        block = data.block_size or min(tokenizer.model_max_length, 1024)
        raise SystemExit(f"error: {data.source()}: gives {len(train)} calibration blocks of {block} tokens, "
                         f"fewer than num_samples={num_samples}; add text, lower block_size or num_samples")
    chosen = sample_blocks(train, num_samples, seed)
    return torch.tensor(chosen["input_ids"], dtype=torch.long)


def batches_of(blocks: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return [blocks[i:i + batch_size] for i in range(0, len(blocks), batch_size)]


class InputStatistics:
    """What one linear layer saw: sum of x x^T (float32, [in, in]), token count, optionally the inputs."""

    def __init__(self, in_features: int, keep_inputs: bool = False, hessian: bool = True):
        self.xtx = torch.zeros(in_features, in_features) if hessian else None
        self.sq_norms = torch.zeros(in_features)  # sum over tokens of x_j^2
        self.abs_sum = torch.zeros(in_features)  # sum over tokens of |x_j|
        self.tokens = 0
        self.inputs: list[torch.Tensor] | None = [] if keep_inputs else None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        if self.xtx is not None:
            self.xtx += x.t() @ x
        self.sq_norms += (x * x).sum(0)
        self.abs_sum += x.abs().sum(0)
        self.tokens += x.shape[0]
        if self.inputs is not None:
            self.inputs.append(x.clone())

    def hessian(self) -> torch.Tensor:
        """H = X^T X / tokens (GPTQ and SparseGPT's 2 X^T X up to a factor their damping makes irrelevant)."""
        return self.xtx / max(self.tokens, 1)

    def input_norms(self) -> torch.Tensor:
        """||X_j||_2 over every calibration token, per input channel (Wanda's activation norm)."""
        return self.sq_norms.sqrt()

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.tokens, 1)

    def stacked_inputs(self) -> torch.Tensor:
        return torch.cat(self.inputs, 0)


@contextlib.contextmanager
def record_inputs(modules: dict[str, nn.Module], in_features: dict[str, int], keep_inputs: bool = False,
                  hessian: bool = True):
    """Forward hooks that fill one `InputStatistics` per named module while the caller runs forward passes."""
    stats = {name: InputStatistics(in_features[name], keep_inputs, hessian) for name in modules}
    handles = [module.register_forward_hook(lambda mod, args, out, name=name: stats[name].add(args[0]))
               for name, module in modules.items()]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper Cholesky factor of (H + damp I)^-1 that GPTQ and SparseGPT sweep over, and the dead inputs.

    Inputs that never fired (zero diagonal) get a unit diagonal, and the caller zeroes their weights, as in
    the reference implementations; damp is `percdamp` times the mean diagonal.
    """
    h = hessian.clone().double()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True).float(), dead
