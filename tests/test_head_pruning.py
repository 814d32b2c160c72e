"""Head selection per iteration, and physical removal of the pruned heads (compact and portable forms)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2LMHeadModel

from compress.models.students import count_parameters
from compress.pruning.head_gates import HeadGates
from compress.pruning.head_pruning import (
    compact_from_masked,
    heads_per_layer,
    heads_to_prune,
    portable_from_compact,
    select_heads_to_prune,
)


def _iterate(importance_fn, layers=12, heads=12, fraction=0.05, iterations=3, target_heads=None):
    mask = torch.ones(layers, heads)
    counts = [int(mask.sum())]
    for step in range(iterations):
        count = heads_to_prune(int(mask.sum()), fraction, target_heads)
        for layer, head in select_heads_to_prune(importance_fn(step), mask, count):
            assert mask[layer, head] == 1  # never a head that is already gone
            mask[layer, head] = 0
        counts.append(int(mask.sum()))
    return counts, mask


def test_gpt2_count_sequence_at_five_percent_is_the_papers():
    generator = torch.Generator().manual_seed(0)
    counts, _ = _iterate(lambda step: torch.rand(12, 12, generator=generator))
    assert counts == [144, 136, 129, 122]


def test_target_heads_caps_the_last_iteration():
    generator = torch.Generator().manual_seed(1)
    counts, _ = _iterate(lambda step: torch.rand(12, 12, generator=generator), target_heads=130)
    assert counts == [144, 136, 130, 130]


def test_no_layer_loses_its_last_head():
    # Layer 0's heads are the least important of all, always: they go first, but one of them stays.
    importance = torch.arange(48.0).view(4, 12)
    counts, mask = _iterate(lambda step: importance, layers=4, heads=12, fraction=0.5, iterations=10)
    assert (mask.sum(dim=1) == 1).all()
    assert counts[-1] == 4 and counts[1] == 24
    assert mask[0, 11] == 1  # the most important head of layer 0 is the one kept
    assert select_heads_to_prune(importance, mask, 3) == []


def test_ties_break_on_the_lower_index():
    mask = torch.ones(2, 3)
    assert select_heads_to_prune(torch.zeros(2, 3), mask, 2) == [(0, 0), (0, 1)]


MASK = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.float32)


def _masked(path, attn):
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).eval()
    gates = HeadGates(model)
    gates.set_mask(MASK)
    return model, gates


def _generate(model, ids):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                          pad_token_id=model.config.eos_token_id)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_compact_and_portable_models_compute_what_the_masked_model_computes(tiny_gpt2, attn):
    masked, gates = _masked(tiny_gpt2, attn)
    compact = compact_from_masked(masked, MASK)
    ids = torch.randint(0, 500, (3, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected_logits = masked(input_ids=ids).logits
        expected_tokens = _generate(masked, ids)
        gates.remove()
        portable = portable_from_compact(compact)
        for model in (compact, portable):
            torch.testing.assert_close(model(input_ids=ids).logits, expected_logits, rtol=1e-5, atol=1e-5)
            assert torch.equal(_generate(model, ids), expected_tokens)
    assert heads_per_layer(compact) == [3, 2, 4, 1]
    assert compact.config.kept_heads == [[0, 2, 3], [1, 3], [0, 1, 2, 3], [3]]
    # Every removed head had 4 x head_dim x width weights (q, k, v columns and c_proj rows) and 3 x head_dim biases.
    head_dim, width = 8, 32
    assert count_parameters(masked) - count_parameters(compact) == 6 * (4 * head_dim * width + 3 * head_dim)
    assert count_parameters(portable) == count_parameters(masked)
    assert compact.lm_head.weight is compact.transformer.wte.weight  # embeddings stay tied


def test_portable_form_zeroes_exactly_the_pruned_heads(tiny_gpt2):
    masked, gates = _masked(tiny_gpt2, "eager")
    portable = portable_from_compact(compact_from_masked(masked, MASK))
    original = masked.state_dict()
    for layer in range(4):
        proj = portable.transformer.h[layer].attn.c_proj.weight.view(4, 8, 32)
        qkv = portable.transformer.h[layer].attn.c_attn.weight.view(32, 3, 4, 8)
        for head in range(4):
            if MASK[layer, head]:
                torch.testing.assert_close(proj[head], original[f"transformer.h.{layer}.attn.c_proj.weight"]
                                           .view(4, 8, 32)[head])
            else:
                assert not proj[head].any() and not qkv[:, :, head].any()


def test_saved_forms_reload_with_the_same_outputs(tiny_gpt2, tmp_path):
    masked, gates = _masked(tiny_gpt2, "sdpa")
    compact = compact_from_masked(masked, MASK)
    compact.save_pretrained(tmp_path / "compact")
    portable_from_compact(compact).save_pretrained(tmp_path / "portable")
    config = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert config["model_type"] == "compact_gpt2" and (tmp_path / "compact" / "compact_gpt2.py").is_file()
    assert config["auto_map"]["AutoModelForCausalLM"] == "compact_gpt2.CompactGPT2LMHeadModel"
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = masked(input_ids=ids).logits
        reloaded_compact = AutoModelForCausalLM.from_pretrained(tmp_path / "compact", trust_remote_code=True)
        reloaded_portable = AutoModelForCausalLM.from_pretrained(tmp_path / "portable")
        assert type(reloaded_portable) is GPT2LMHeadModel
        assert [a.num_heads for a in (b.attn for b in reloaded_compact.transformer.h)] == [3, 2, 4, 1]
        for model in (reloaded_compact, reloaded_portable):
            torch.testing.assert_close(model.eval()(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
