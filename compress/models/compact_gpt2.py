"""GPT-2 with a different number of attention heads in each layer: the compact form of a head-pruned model.

A pruned GPT-2 keeps, in layer l, only the heads listed in `config.kept_heads[l]` (indices into the
original `n_head` heads). Their query/key/value columns of `c_attn` and their rows of `c_proj` are
all the layer stores, so the model is really smaller and faster. The head size stays
`n_embd // n_head` of the original model.

This file is self-contained (it imports only torch and transformers) because it is saved beside
every compact checkpoint and loaded from there: a checkpoint's `config.json` names it in `auto_map`,
so `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` and
`lm_eval --model hf --model_args pretrained=DIR,trust_remote_code=True` load it with no compfair
installed. `trust_remote_code` is needed because `compact_gpt2` is not a model type transformers
ships; the portable form (a plain GPT-2 whose pruned heads are zeros) needs nothing.
"""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D


class CompactGPT2Config(GPT2Config):
    model_type = "compact_gpt2"

    def __init__(self, kept_heads: list[list[int]] | None = None, **kwargs):
        super().__init__(**kwargs)
        if kept_heads is None:  # an unpruned model keeps every head
            kept_heads = [list(range(self.n_head)) for _ in range(self.n_layer)]
        if len(kept_heads) != self.n_layer or any(not heads for heads in kept_heads):
            raise ValueError(f"kept_heads must list at least one head for each of the {self.n_layer} layers")
        self.kept_heads = [sorted(int(h) for h in heads) for heads in kept_heads]

    @property
    def heads_per_layer(self) -> list[int]:
        return [len(heads) for heads in self.kept_heads]


def shrink_attention(attn, num_heads: int) -> None:
    """Resize a `GPT2Attention` to `num_heads` heads of the same size (fresh weights, to be loaded).

    GPT-2's attention reshapes with -1 heads, so only the projections and the q/k/v split size
    depend on the head count.
    """
    head_dim = attn.head_dim
    width = num_heads * head_dim
    attn.c_attn = Conv1D(3 * width, attn.embed_dim)
    attn.c_proj = Conv1D(attn.embed_dim, width)
    attn.num_heads = num_heads
    attn.split_size = width


class CompactGPT2LMHeadModel(GPT2LMHeadModel):
    config: CompactGPT2Config
    config_class = CompactGPT2Config

    def __init__(self, config: CompactGPT2Config):
        super().__init__(config)
        for block, heads in zip(self.transformer.h, config.kept_heads):
            if len(heads) != config.n_head:
                shrink_attention(block.attn, len(heads))


# `save_pretrained` copies this file beside the checkpoint and writes `auto_map` into config.json.
CompactGPT2Config.register_for_auto_class()
CompactGPT2LMHeadModel.register_for_auto_class("AutoModelForCausalLM")
