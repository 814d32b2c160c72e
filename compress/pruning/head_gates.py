"""Head gates and head importance (Michel et al., 2019, "Are Sixteen Heads Really Better than One?").

transformers 5 dropped `head_mask`, so the gates live on the model's modules: a forward pre-hook
on each block's attention output projection (`compress.models.attention` knows which module that is in
every supported family) multiplies every head's slice of the projection's input (the concatenated head
outputs) by that head's gate. The hook sees the same tensor whatever attention implementation (eager,
SDPA, flash) produced it. A gate belongs to a unit, a query head or a KV group (see `attention.py`).

Importance of unit h is Michel et al.'s E_x |dL(x)/d gate_h|: for every sequence x, the gradient of
its summed next-token loss with respect to the gate, in absolute value, summed over sequences and
divided by the number of predicted tokens (a mean over tokens); then, optionally, L2-normalised
within each layer. The importance pass gives each sequence of a batch its own copy of the gates, so
one backward pass yields every sequence's gradient. (Michel et al.'s code takes the absolute value
per batch, which makes the scores depend on the batch size and, under data parallelism, on the
number of processes; per sequence they depend on neither.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from compress.models.attention import (
    UnsupportedAttention,
    attention_modules,
    check_unit,
    head_shape,
    layout_of,
    output_projections,
)


def check_supported(config, unit: str | None = None) -> None:
    """One-line error (SystemExit) for architectures, or units, the gates and the physical pruning do not know."""
    try:
        layout_of(config)
        if unit is not None:
            check_unit(config, unit)
    except UnsupportedAttention as err:
        raise SystemExit(f"error: {err}") from None


def attention_blocks(model) -> list:
    """The attention modules of a supported causal LM, in layer order."""
    return attention_modules(model)


class HeadGates:
    """A (layers, units) gate tensor applied to each head's output before the attention output projection.

    A unit is a query head (`unit="query_head"`) or a KV group (`"kv_group"`, the default: every query head
    sharing one KV head gets the group's gate; without GQA the two are the same). `gates.values` starts at
    ones; set an entry to 0 to mask that unit. While `per_sequence` holds a (batch, layers, units) tensor,
    the hooks use it instead: one set of gates for each sequence of the batch. Remove the hooks with
    `remove()` (or use the object as a context manager).
    """

    def __init__(self, model, unit: str = "kv_group"):
        check_supported(model.config, unit)
        self.unit = unit
        self.shape = head_shape(model.config)
        self.num_layers = self.shape.num_layers
        self.num_heads = self.shape.num_heads  # query heads
        self.num_units = self.shape.units_per_layer(unit)
        self.head_dim = self.shape.head_dim
        # query heads per unit: the gate of unit u covers query heads [u * repeat, (u + 1) * repeat)
        self.repeat = self.num_heads // self.num_units
        weight = next(model.parameters())
        # At least float32, so importance sums do not lose precision under half-precision weights.
        dtype = torch.promote_types(weight.dtype, torch.float32)
        self.values = torch.ones(self.num_layers, self.num_units, device=weight.device, dtype=dtype)
        self.per_sequence: torch.Tensor | None = None
        self._handles = [projection.register_forward_pre_hook(self._hook(layer))
                         for layer, projection in enumerate(output_projections(model))]

    def _hook(self, layer: int) -> Callable:
        def gate(module, args):
            heads = args[0]  # (batch, positions, num_heads * head_dim), heads side by side
            if self.per_sequence is None:
                g = self.values[layer]  # (units,)
            else:
                g = self.per_sequence[:, layer, None, :]  # (batch, 1, units): the same at every position
            g = g.to(device=heads.device, dtype=heads.dtype)
            if self.repeat > 1:
                g = g.repeat_interleave(self.repeat, dim=-1)  # unit gate -> each of its query heads
            shaped = heads.view(*heads.shape[:-1], self.num_heads, self.head_dim)
            return ((shaped * g[..., None]).view(heads.shape), *args[1:])
        return gate

    def query_head_mask(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(layers, query heads) 0/1 mask of the query heads still in play, from a unit mask (default: ours)."""
        mask = self.mask if mask is None else mask
        return mask.repeat_interleave(self.repeat, dim=-1)

    @property
    def mask(self) -> torch.Tensor:
        """0/1 mask of the heads still in play (a copy)."""
        return (self.values.detach() != 0).to(self.values.dtype)

    def set_mask(self, mask: torch.Tensor) -> None:
        with torch.no_grad():
            self.values.copy_(mask.to(self.values))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def sequence_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the sum of next-token cross-entropies and the number of predicted tokens (-100 skipped)."""
    targets = labels[..., 1:]
    dtype = torch.promote_types(logits.dtype, torch.float32)  # at least float32; float64 stays float64
    losses = F.cross_entropy(logits[..., :-1, :].transpose(1, 2).to(dtype), targets, ignore_index=-100,
                             reduction="none")
    return losses.sum(dim=-1), (targets != -100).sum(dim=-1)


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropies over the batch and the number of predicted tokens."""
    losses, tokens = sequence_token_losses(logits, labels)
    return losses.sum(), int(tokens.sum())


@contextmanager
def frozen_parameters(model):
    """Only the gates need gradients: freezing the weights skips their gradient computation."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def normalize_per_layer(importance: torch.Tensor) -> torch.Tensor:
    """Divide each layer's scores by their L2 norm (Michel et al.'s normalisation)."""
    return importance / (importance.norm(dim=-1, keepdim=True) + 1e-20)


@contextmanager
def _no_autocast():
    yield


def accumulate_gate_gradients(model, gates: HeadGates, batches: Iterable[dict],
                              autocast=None) -> tuple[torch.Tensor, int]:
    """Sum over sequences of |d(sequence's summed token loss)/d gate|, and the number of tokens it covers.

    The model runs in eval mode (no dropout noise in the scores) with its weights frozen; the
    gradients are cleared after every batch. Distributed callers sum both results over processes.
    """
    was_training = model.training
    model.eval()
    total = torch.zeros_like(gates.values)
    tokens = 0
    device = gates.values.device
    autocast = autocast or _no_autocast
    try:
        with frozen_parameters(model):
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                labels = batch.pop("labels", batch["input_ids"])
                # Each sequence's loss depends only on its own gates, so d(batch loss)/d(its gates)
                # is that sequence's gradient.
                gates.per_sequence = gates.values.expand(len(labels), -1, -1).clone().requires_grad_(True)
                with autocast():
                    logits = model(**batch).logits
                loss, n = summed_token_loss(logits, labels)
                loss.backward()
                total += gates.per_sequence.grad.abs().sum(dim=0)
                gates.per_sequence = None
                tokens += n
    finally:
        gates.per_sequence = None
        model.train(was_training)
    return total, tokens


def finish_importance(gradient_sum: torch.Tensor, tokens: int, mask: torch.Tensor,
                      normalize: bool = True) -> torch.Tensor:
    """Turn summed |gradients| into importance scores; masked heads score 0 and take no part in the norm."""
    importance = gradient_sum / max(tokens, 1) * mask.to(gradient_sum)
    return normalize_per_layer(importance) if normalize else importance


def head_importance(model, gates: HeadGates, batches: Iterable[dict], normalize: bool = True,
                    autocast=None) -> torch.Tensor:
    """Importance of every head on `batches` (single process), given the current gate values."""
    gradient_sum, tokens = accumulate_gate_gradients(model, gates, batches, autocast=autocast)
    return finish_importance(gradient_sum, tokens, gates.mask, normalize)
