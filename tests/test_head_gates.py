"""Head gates and Michel et al. importance, checked against independent recomputations on the tiny GPT-2."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from compress.pruning.head_gates import HeadGates, check_supported, head_importance

LAYERS, HEADS, WIDTH = 4, 4, 32  # the default tiny GPT-2
HEAD_DIM = WIDTH // HEADS


def _load(path, attn="eager", dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn).to(dtype).eval()


def _batches(seed=0, n=3, batch=2, length=12, vocab=500):
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (batch, length), generator=generator)} for _ in range(n)]


def _scale_head_rows(model, scales):
    """Independent gating: multiply head h's rows of c_proj (its share of the output projection) by scales[l, h]."""
    with torch.no_grad():
        for layer, block in enumerate(model.transformer.h):
            weight = block.attn.c_proj.weight.view(HEADS, HEAD_DIM, WIDTH)
            weight.mul_(scales[layer].to(weight)[:, None, None])


def _sequence_losses(model, batch):
    """Each sequence's summed next-token loss."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(dim=1)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_gates_equal_zeroing_the_heads_projection_rows(tiny_gpt2, attn):
    mask = torch.ones(LAYERS, HEADS)
    mask[0, 1] = mask[2, 0] = mask[2, 3] = 0
    gated = _load(tiny_gpt2, attn)
    gates = HeadGates(gated)
    gates.set_mask(mask)
    reference = _load(tiny_gpt2, attn)
    _scale_head_rows(reference, mask)
    ids = _batches(n=1)[0]["input_ids"]
    with torch.no_grad():
        plain = _load(tiny_gpt2, attn)(input_ids=ids).logits
        masked = gated(input_ids=ids).logits
        torch.testing.assert_close(masked, reference(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
        assert (masked - plain).abs().max() > 1e-3  # the mask really changes the output
        gates.remove()
        torch.testing.assert_close(gated(input_ids=ids).logits, plain)  # hooks gone: the plain model again


@pytest.mark.parametrize("normalize", [False, True])
def test_importance_equals_finite_differences(tiny_gpt2, normalize):
    mask = torch.ones(LAYERS, HEADS)
    mask[1, 2] = 0  # a masked head: gradients are taken at the current mask, and it scores 0
    batches = _batches()
    model = _load(tiny_gpt2, dtype=torch.float64)
    gates = HeadGates(model)
    gates.set_mask(mask)
    importance = head_importance(model, gates, batches, normalize=normalize)

    # Central differences of each sequence's summed token loss in one head's scale, with the mask
    # applied by scaling projection rows instead of by the gates.
    eps = 1e-4
    reference = _load(tiny_gpt2, dtype=torch.float64)
    original = {k: v.clone() for k, v in reference.state_dict().items()}
    expected = torch.zeros(LAYERS, HEADS, dtype=torch.float64)
    tokens = sum(b["input_ids"][:, 1:].numel() for b in batches)
    for layer in range(LAYERS):
        for head in range(HEADS):
            if not mask[layer, head]:
                continue
            losses = []
            for sign in (1, -1):
                scales = mask.double().clone()
                scales[layer, head] += sign * eps
                reference.load_state_dict(original)
                _scale_head_rows(reference, scales)
                with torch.no_grad():
                    losses.append(torch.cat([_sequence_losses(reference, b) for b in batches]))
            expected[layer, head] = ((losses[0] - losses[1]) / (2 * eps)).abs().sum() / tokens
    if normalize:
        expected = expected / expected.norm(dim=1, keepdim=True)
        torch.testing.assert_close(importance.norm(dim=1), torch.ones(LAYERS, dtype=torch.float64))
    assert importance[1, 2] == 0
    assert importance.dtype == torch.float64 and (importance[mask.bool()] > 0).all()
    torch.testing.assert_close(importance, expected, rtol=1e-5, atol=1e-9)


def test_importance_clears_gradients_and_restores_the_model(tiny_gpt2):
    model = _load(tiny_gpt2)
    model.train()
    gates = HeadGates(model)
    one = head_importance(model, gates, _batches(n=1), normalize=False)
    again = head_importance(model, gates, _batches(n=1), normalize=False)
    torch.testing.assert_close(one, again)  # nothing carried over from the previous pass
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())  # the weights were never differentiated
    assert gates.values.grad is None and not gates.values.requires_grad and gates.per_sequence is None


def test_importance_does_not_depend_on_how_sequences_are_batched(tiny_gpt2):
    model = _load(tiny_gpt2, dtype=torch.float64)
    gates = HeadGates(model)
    sequences = torch.cat([b["input_ids"] for b in _batches(n=2, batch=3)])  # 6 sequences
    by_batch = [head_importance(model, gates, [{"input_ids": chunk} for chunk in sequences.split(size)])
                for size in (1, 2, 6)]
    torch.testing.assert_close(by_batch[0], by_batch[1])
    torch.testing.assert_close(by_batch[0], by_batch[2])


def test_other_architectures_are_refused_by_name(tiny_seq2seq):
    with pytest.raises(SystemExit, match="'blenderbot' is not supported yet"):
        check_supported(AutoConfig.from_pretrained(tiny_seq2seq))
