"""Compact head-pruned models of the Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3, GPT-NeoX and OPT
families: the stock model with a different number of attention heads in each layer.

Layer l keeps the query heads `config.kept_heads[l]` and the key/value heads `config.kept_kv_heads[l]`
(indices into the original heads); its attention projections hold only their rows and columns, so the
model is really smaller and faster. `head_dim` and the query-to-KV ratio stay the original ones (whole
KV groups are removed), which is what the stock attention code assumes: it reshapes with -1 heads and
repeats each KV head `num_key_value_groups` times. The few families that read a head count at run time
get it per layer: OPT's `num_heads`, Phi-3's `num_key_value_heads` and the `num_attention_heads` its
fused `qkv_proj` split reads from the config (each pruned layer gets a view of the config that differs
only there).

No stock transformers config field gives per-layer head counts for these families, so a compact
checkpoint carries this file (it imports only torch and transformers) and names it in `auto_map`:
`AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)` and `lm_eval --model hf
--model_args pretrained=DIR,trust_remote_code=True` load it with no compfair installed. The portable form
(the stock architecture with the pruned heads' weights zero) needs nothing. GPT-2 has its own file,
`compact_gpt2.py`.
"""

from __future__ import annotations

from torch import nn
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)


class _LayerConfig:
    """The model's config, but with this layer's own values for a few fields (read-through otherwise)."""

    def __init__(self, config, **overrides):
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_overrides", overrides)

    def __getattr__(self, name):
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_config"), name)

    def __setattr__(self, name, value):
        setattr(object.__getattribute__(self, "_config"), name, value)


def _linear(old: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                     dtype=old.weight.dtype)


def _head_counts(config) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return heads, kv_heads, head_dim


def _shrink(family: str, attn: nn.Module, config, num_heads: int, num_kv_heads: int) -> None:
    """Resize one attention module to `num_heads` query and `num_kv_heads` KV heads (fresh weights, to be loaded)."""
    _, _, d = _head_counts(config)
    hidden = config.hidden_size
    if family == "phi3":
        attn.qkv_proj = _linear(attn.qkv_proj, hidden, (num_heads + 2 * num_kv_heads) * d)
        attn.o_proj = _linear(attn.o_proj, num_heads * d, hidden)
        attn.num_key_value_heads = num_kv_heads
        attn.config = _LayerConfig(config, num_attention_heads=num_heads)
    elif family == "gpt_neox":
        attn.query_key_value = _linear(attn.query_key_value, hidden, 3 * num_heads * d)
        attn.dense = _linear(attn.dense, num_heads * d, hidden)
    else:
        attn.q_proj = _linear(attn.q_proj, hidden, num_heads * d)
        attn.k_proj = _linear(attn.k_proj, hidden, num_kv_heads * d)
        attn.v_proj = _linear(attn.v_proj, hidden, num_kv_heads * d)
        output = "out_proj" if family == "opt" else "o_proj"
        setattr(attn, output, _linear(getattr(attn, output), num_heads * d, hidden))
        if family == "opt":
            attn.num_heads = num_heads
        else:
            attn.num_key_value_groups = num_heads // num_kv_heads


class _CompactConfig:
    """Mixed into a stock config: `kept_heads` / `kept_kv_heads` per layer (default: every head)."""

    def _set_kept(self, kept_heads, kept_kv_heads) -> None:
        heads, kv_heads, _ = _head_counts(self)
        layers = self.num_hidden_layers
        if kept_heads is None:
            kept_heads = [list(range(heads)) for _ in range(layers)]
        if kept_kv_heads is None:
            kept_kv_heads = [sorted({h * kv_heads // heads for h in layer}) for layer in kept_heads]
        if len(kept_heads) != layers or len(kept_kv_heads) != layers or any(not h for h in kept_heads):
            raise ValueError(f"kept_heads and kept_kv_heads must list at least one head for each of the {layers} "
                             "layers")
        self.kept_heads = [sorted(int(h) for h in layer) for layer in kept_heads]
        self.kept_kv_heads = [sorted(int(h) for h in layer) for layer in kept_kv_heads]
        for q, kv in zip(self.kept_heads, self.kept_kv_heads):
            if len(q) * kv_heads != len(kv) * heads:
                raise ValueError("a compact layer must keep whole KV groups (query heads per KV head unchanged), "
                                 f"got {len(q)} query and {len(kv)} KV heads")

    @property
    def heads_per_layer(self) -> list[int]:
        return [len(heads) for heads in self.kept_heads]

    @property
    def kv_heads_per_layer(self) -> list[int]:
        return [len(heads) for heads in self.kept_kv_heads]


def _blocks(model, family: str):
    if family == "gpt_neox":
        return [layer.attention for layer in model.gpt_neox.layers]
    if family == "opt":
        return [layer.self_attn for layer in model.model.decoder.layers]
    return [layer.self_attn for layer in model.model.layers]


class _CompactModel:
    """Mixed into a stock causal LM: after the stock `__init__`, shrink every pruned layer's attention."""

    family: str

    def _shrink_layers(self, config) -> None:
        heads, kv_heads, _ = _head_counts(config)
        for attn, q, kv in zip(_blocks(self, self.family), config.kept_heads, config.kept_kv_heads):
            if len(q) != heads or len(kv) != kv_heads:
                _shrink(self.family, attn, config, len(q), len(kv))


def _config_init(base):
    def __init__(self, kept_heads=None, kept_kv_heads=None, **kwargs):
        base.__init__(self, **kwargs)
        self._set_kept(kept_heads, kept_kv_heads)
    return __init__


def _model_init(base):
    def __init__(self, config):
        base.__init__(self, config)
        self._shrink_layers(config)
    return __init__


class CompactLlamaConfig(_CompactConfig, LlamaConfig):
    model_type = "compact_llama"
    __init__ = _config_init(LlamaConfig)


class CompactLlamaForCausalLM(_CompactModel, LlamaForCausalLM):
    config_class = CompactLlamaConfig
    family = "llama"
    __init__ = _model_init(LlamaForCausalLM)


class CompactMistralConfig(_CompactConfig, MistralConfig):
    model_type = "compact_mistral"
    __init__ = _config_init(MistralConfig)


class CompactMistralForCausalLM(_CompactModel, MistralForCausalLM):
    config_class = CompactMistralConfig
    family = "mistral"
    __init__ = _model_init(MistralForCausalLM)


class CompactQwen2Config(_CompactConfig, Qwen2Config):
    model_type = "compact_qwen2"
    __init__ = _config_init(Qwen2Config)


class CompactQwen2ForCausalLM(_CompactModel, Qwen2ForCausalLM):
    config_class = CompactQwen2Config
    family = "qwen2"
    __init__ = _model_init(Qwen2ForCausalLM)


class CompactQwen3Config(_CompactConfig, Qwen3Config):
    model_type = "compact_qwen3"
    __init__ = _config_init(Qwen3Config)


class CompactQwen3ForCausalLM(_CompactModel, Qwen3ForCausalLM):
    config_class = CompactQwen3Config
    family = "qwen3"
    __init__ = _model_init(Qwen3ForCausalLM)


class CompactGemma2Config(_CompactConfig, Gemma2Config):
    model_type = "compact_gemma2"
    __init__ = _config_init(Gemma2Config)


class CompactGemma2ForCausalLM(_CompactModel, Gemma2ForCausalLM):
    config_class = CompactGemma2Config
    family = "gemma2"
    __init__ = _model_init(Gemma2ForCausalLM)


class CompactGemma3TextConfig(_CompactConfig, Gemma3TextConfig):
    model_type = "compact_gemma3_text"
    __init__ = _config_init(Gemma3TextConfig)


class CompactGemma3ForCausalLM(_CompactModel, Gemma3ForCausalLM):
    config_class = CompactGemma3TextConfig
    family = "gemma3_text"
    __init__ = _model_init(Gemma3ForCausalLM)


class CompactPhi3Config(_CompactConfig, Phi3Config):
    model_type = "compact_phi3"
    __init__ = _config_init(Phi3Config)


class CompactPhi3ForCausalLM(_CompactModel, Phi3ForCausalLM):
    config_class = CompactPhi3Config
    family = "phi3"
    __init__ = _model_init(Phi3ForCausalLM)


class CompactGPTNeoXConfig(_CompactConfig, GPTNeoXConfig):
    model_type = "compact_gpt_neox"
    __init__ = _config_init(GPTNeoXConfig)


class CompactGPTNeoXForCausalLM(_CompactModel, GPTNeoXForCausalLM):
    config_class = CompactGPTNeoXConfig
    family = "gpt_neox"
    __init__ = _model_init(GPTNeoXForCausalLM)


class CompactOPTConfig(_CompactConfig, OPTConfig):
    model_type = "compact_opt"
    __init__ = _config_init(OPTConfig)


class CompactOPTForCausalLM(_CompactModel, OPTForCausalLM):
    config_class = CompactOPTConfig
    family = "opt"
    __init__ = _model_init(OPTForCausalLM)


# model_type of the stock family -> (compact config class, compact model class)
COMPACT_CLASSES = {
    "llama": (CompactLlamaConfig, CompactLlamaForCausalLM),
    "mistral": (CompactMistralConfig, CompactMistralForCausalLM),
    "qwen2": (CompactQwen2Config, CompactQwen2ForCausalLM),
    "qwen3": (CompactQwen3Config, CompactQwen3ForCausalLM),
    "gemma2": (CompactGemma2Config, CompactGemma2ForCausalLM),
    "gemma3_text": (CompactGemma3TextConfig, CompactGemma3ForCausalLM),
    "phi3": (CompactPhi3Config, CompactPhi3ForCausalLM),
    "gpt_neox": (CompactGPTNeoXConfig, CompactGPTNeoXForCausalLM),
    "opt": (CompactOPTConfig, CompactOPTForCausalLM),
}

# `save_pretrained` copies this file beside the checkpoint and writes `auto_map` into config.json.
for _config_class, _model_class in COMPACT_CLASSES.values():
    _config_class.register_for_auto_class()
    _model_class.register_for_auto_class("AutoModelForCausalLM")
