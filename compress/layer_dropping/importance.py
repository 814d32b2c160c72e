"""How much each decoder block changes the hidden state, measured on calibration text.

Two published scores, both from the hidden state entering a block (or span of blocks) and the one leaving it:

- **Angular distance** (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers", eq. 7):
  for a span of `n` consecutive blocks starting at block l,
  d(x^(l), x^(l+n)) = arccos(cos(x^(l)_T, x^(l+n)_T)) / pi, where x^(l) enters block l, x^(l+n) leaves block
  l+n-1, and T is the last token of the sequence; averaged over the calibration sequences. The n blocks of the
  span with the smallest distance are removed together.
- **Block Influence** (Men et al. 2024, ShortGPT, eq. 1): BI_i = 1 - E_{X,t}[cos(X_{i,t}, X_{i+1,t})], the
  expectation over every token t of every calibration sequence; the k blocks with the lowest BI are removed,
  wherever they are.

`token_positions` can swap the token set ("last" or "all" non-padding tokens); by default each score uses its
paper's. States are read with hooks on the blocks themselves, so the last block's output is its raw output, not
the final-norm output that `output_hidden_states` reports in its place.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from compress.models.blocks import decoder_blocks

ANGULAR_DISTANCE = "angular_distance"
BLOCK_INFLUENCE = "block_influence"
METHODS = (ANGULAR_DISTANCE, BLOCK_INFLUENCE)
# The token set each paper averages over.
PAPER_TOKEN_POSITIONS = {ANGULAR_DISTANCE: "last", BLOCK_INFLUENCE: "all"}
TOKEN_POSITIONS = ("auto", "last", "all")


def resolve_token_positions(method: str, token_positions: str) -> str:
    return PAPER_TOKEN_POSITIONS[method] if token_positions == "auto" else token_positions


def _hidden(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


@torch.no_grad()
def block_hidden_states(model: nn.Module, **inputs) -> list[torch.Tensor]:
    """[x^(0), ..., x^(L)]: the state entering block 0, then the state leaving each block, for one forward pass."""
    blocks = decoder_blocks(model)
    states: list = [None] * (len(blocks) + 1)

    def entering(module, args, kwargs):
        states[0] = _hidden(args[0] if args else kwargs["hidden_states"]).detach()

    def leaving(index):
        def hook(module, args, kwargs, output):
            states[index + 1] = _hidden(output).detach()
        return hook

    handles = [blocks[0].register_forward_pre_hook(entering, with_kwargs=True)]
    handles += [block.register_forward_hook(leaving(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        model(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return states


def selected_tokens(attention_mask: torch.Tensor, token_positions: str) -> torch.Tensor:
    """Boolean [batch, seq] mask of the tokens averaged over: every real token, or each sequence's last one."""
    real = attention_mask.bool()
    if token_positions == "all":
        return real
    if token_positions != "last":
        raise ValueError(f"token_positions must be one of {', '.join(TOKEN_POSITIONS)}, got {token_positions!r}")
    positions = torch.arange(real.shape[1], device=real.device).expand_as(real)
    last = torch.where(real, positions, -1).max(dim=1).values
    return positions == last.unsqueeze(1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def score_sums(states: list[torch.Tensor], tokens: torch.Tensor, method: str, span: int = 1) -> torch.Tensor:
    """Per candidate, the sum over the selected tokens of the quantity its score averages.

    angular_distance: one entry per span start l = 0..L-span, summing arccos(cos(x^(l), x^(l+span))) / pi.
    block_influence: one entry per block i, summing cos(x^(i), x^(i+1)) (the score is 1 minus its mean).
    """
    num_blocks = len(states) - 1
    if method == ANGULAR_DISTANCE:
        pairs = [(start, start + span) for start in range(num_blocks - span + 1)]
    elif method == BLOCK_INFLUENCE:
        pairs = [(i, i + 1) for i in range(num_blocks)]
    else:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    sums = []
    for first, second in pairs:
        cosine = _cosine(states[first][tokens], states[second][tokens])
        value = torch.arccos(cosine.clamp(-1.0, 1.0)) / math.pi if method == ANGULAR_DISTANCE else cosine
        sums.append(value.sum())
    return torch.stack(sums)


@torch.no_grad()
def accumulate_score_sums(model: nn.Module, batches, method: str, span: int, token_positions: str,
                          autocast=contextlib.nullcontext) -> tuple[torch.Tensor, int]:
    """Score sums over every batch (dicts with input_ids and optionally attention_mask) and the tokens counted."""
    model.eval()
    device = next(model.parameters()).device
    total, count = None, 0
    for batch in batches:
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch.get("attention_mask")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
        with autocast():
            states = block_hidden_states(model, input_ids=input_ids, attention_mask=attention_mask)
        tokens = selected_tokens(attention_mask, token_positions)
        sums = score_sums(states, tokens, method, span)
        total = sums if total is None else total + sums
        count += int(tokens.sum())
    if total is None:
        raise ValueError("no calibration batch: the importance data is empty")
    return total, count


def finish_scores(sums: torch.Tensor, tokens: int, method: str) -> torch.Tensor:
    """Mean angular distance per span start, or Block Influence per block."""
    mean = sums / max(tokens, 1)
    return mean if method == ANGULAR_DISTANCE else 1.0 - mean


def blocks_to_remove(scores: torch.Tensor, method: str, count: int) -> list[int]:
    """angular_distance: the span of `count` blocks starting where the distance is smallest (first on ties);
    block_influence: the `count` blocks of lowest influence (lower index first on ties). Sorted."""
    if method == ANGULAR_DISTANCE:
        start = int(torch.argmin(scores))  # argmin returns the first minimum
        return list(range(start, start + count))
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:count])
