"""Head pruning of every supported family, on a tiny random checkpoint of each built on the spot.

Each tiny model has 3 blocks of 8 units (GQA families: 16 query heads in 8 KV groups of 2; multi-head
families: 8 heads); Gemma's head_dim (8) differs from hidden_size / heads (2). The independent references
here scale or zero the output projection's input columns (rows for GPT-2's Conv1D) that belong to a head,
located by this file's own table, never by the gates or `compress.models.attention`.
"""

import ast
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from compress.common.tiny_models import TINY_CAUSAL_LM_TYPES
from compress.models.students import count_parameters
from compress.pruning.head_gates import HeadGates, check_supported, head_importance
from compress.pruning.head_pruning import compact_from_masked, portable_from_compact, portable_from_masked

REPO = Path(__file__).resolve().parents[1]
GQA = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"}
LAYERS = 3
# model_type -> (blocks path, output projection inside a block, query heads, KV heads, head_dim), transcribed
# from the transformers 5 modeling files and the tiny configs.
HAND = {
    "gpt2": ("transformer.h", "attn.c_proj", 8, 8, 4),
    "llama": ("model.layers", "self_attn.o_proj", 16, 8, 4),
    "mistral": ("model.layers", "self_attn.o_proj", 16, 8, 4),
    "qwen2": ("model.layers", "self_attn.o_proj", 16, 8, 4),
    "qwen3": ("model.layers", "self_attn.o_proj", 16, 8, 4),
    "gemma2": ("model.layers", "self_attn.o_proj", 16, 8, 8),
    "gemma3_text": ("model.layers", "self_attn.o_proj", 16, 8, 8),
    "phi3": ("model.layers", "self_attn.o_proj", 16, 8, 4),
    "gpt_neox": ("gpt_neox.layers", "attention.dense", 8, 8, 4),
    "opt": ("model.decoder.layers", "self_attn.out_proj", 8, 8, 4),
}
# units kept per layer in the forms tests: a layer down to one unit, one missing two, one missing one
UNIT_MASK = torch.ones(LAYERS, 8)
UNIT_MASK[0, [1, 5]] = 0
UNIT_MASK[1, :7] = 0
UNIT_MASK[2, 6] = 0


@pytest.fixture(scope="module")
def family_dir(tiny_checkpoint):
    return lambda model_type: tiny_checkpoint("causal_lm", model_type=model_type)


def _load(path, dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def _float64_throughout(model):
    """Make a float64 model compute in float64 everywhere the families' code casts to float32.

    Every RMSNorm here upcasts to float32 and back, and eager attention takes its softmax in float32, even
    in a float64 model; finite differences at a small step would drown in that rounding. The norms get
    their own formula (Gemma: x / rms(x) * (1 + w); the others: w * x / rms(x)) in the input's dtype and
    attention runs through SDPA (float64 on CPU); the gates and the reference get the same treatment.
    """
    def rms_forward(norm, gemma):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))

        def forward(x):
            normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            return normed * (1 + norm.weight) if gemma else norm.weight * normed
        return forward

    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = rms_forward(module, name.startswith("Gemma"))
    if model.config.model_type != "gemma2":  # SDPA has no logit softcapping: Gemma 2 stays eager, patched below
        model.set_attn_implementation("sdpa")
    return model


def _gemma2_eager_in_float64(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None,
                             **kwargs):
    """Gemma 2's eager attention (modeling_gemma2.eager_attention_forward) with its softmax in the input dtype."""
    groups = module.num_key_value_groups
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _scale_heads(model, scales):
    """Multiply query head h's input columns of layer l's output projection by scales[l, h], in place."""
    blocks_path, output, heads, _, head_dim = HAND[model.config.model_type]
    blocks = model.get_submodule(blocks_path)
    with torch.no_grad():
        for layer, block in enumerate(blocks):
            weight = block.get_submodule(output).weight
            per_head = scales[layer].to(weight).repeat_interleave(head_dim)
            if model.config.model_type == "gpt2":  # Conv1D: (in, out)
                weight.mul_(per_head[:, None])
            else:  # Linear: (out, in)
                weight.mul_(per_head[None, :])


def _query_scales(model_type, unit_scales, unit="kv_group"):
    _, _, heads, kv_heads, _ = HAND[model_type]
    repeat = heads // kv_heads if unit == "kv_group" else 1
    return unit_scales.repeat_interleave(repeat, dim=1)


def _ids(seed=0, batch=2, length=9):
    return torch.randint(1, 500, (batch, length), generator=torch.Generator().manual_seed(seed))


def _generate(model, ids):
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                          pad_token_id=0)


def _sequence_losses(model, ids):
    logits = model(input_ids=ids).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none").sum(dim=1)


@pytest.mark.parametrize("model_type", TINY_CAUSAL_LM_TYPES)
def test_head_layout_is_read_from_each_familys_config(family_dir, model_type):
    model = _load(family_dir(model_type))
    gates = HeadGates(model)
    _, _, heads, kv_heads, head_dim = HAND[model_type]
    assert (gates.num_layers, gates.num_heads, gates.head_dim) == (LAYERS, heads, head_dim)
    assert gates.values.shape == (LAYERS, 8) and gates.repeat == heads // kv_heads
    assert HeadGates(model, "query_head").values.shape == (LAYERS, heads)


def test_unsupported_families_get_one_line_saying_why(tiny_seq2seq):
    with pytest.raises(SystemExit, match="'olmo2' is refused: its q_norm/k_norm are RMSNorms over all heads") as err:
        check_supported(AutoConfig.for_model("olmo2"))
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit, match="'blenderbot' is not supported yet"):
        check_supported(AutoConfig.from_pretrained(tiny_seq2seq))
    with pytest.raises(SystemExit, match="unit must be one of kv_group, query_head"):
        check_supported(AutoConfig.for_model("llama"), "head")


@pytest.mark.parametrize("model_type, unit", [(t, "kv_group") for t in TINY_CAUSAL_LM_TYPES]
                         + [("llama", "query_head"), ("phi3", "query_head")])
def test_importance_equals_float64_finite_differences_of_the_gates(family_dir, model_type, unit, monkeypatch):
    from transformers.models.gemma2 import modeling_gemma2

    monkeypatch.setattr(modeling_gemma2, "eager_attention_forward", _gemma2_eager_in_float64)
    path = family_dir(model_type)
    model = _float64_throughout(_load(path, torch.float64))
    gates = HeadGates(model, unit)
    mask = torch.ones_like(gates.values)
    mask[1, 2] = 0  # masked unit: gradients are taken at the current mask and it scores 0
    gates.set_mask(mask)
    batches = [{"input_ids": _ids(1, batch=3)}]  # one batch of 3: each sequence's gradient is its own
    importance = head_importance(model, gates, batches, normalize=False)

    # Central differences of each sequence's summed token loss in one unit's scale, the scale applied to the
    # output projection's weights.
    reference = _float64_throughout(_load(path, torch.float64))
    blocks_path, output = HAND[model_type][:2]
    projections = [block.get_submodule(output).weight for block in reference.get_submodule(blocks_path)]
    original = [weight.detach().clone() for weight in projections]
    tokens = sum(b["input_ids"][:, 1:].numel() for b in batches)

    def losses_at(layer, u, offset):
        scales = mask.double().clone()
        scales[layer, u] += offset
        with torch.no_grad():
            for weight, saved in zip(projections, original):
                weight.copy_(saved)
        _scale_heads(reference, _query_scales(model_type, scales, unit))
        with torch.no_grad():
            return torch.cat([_sequence_losses(reference, b["input_ids"]) for b in batches])

    def central(layer, u, step):
        return (losses_at(layer, u, step) - losses_at(layer, u, -step)) / (2 * step)

    # every unit of the middle layer, the first and last of the others (enough to catch a misplaced head)
    units = mask.shape[1]
    checked = [(1, u) for u in range(units)] + [(layer, u) for layer in (0, 2) for u in (0, units - 1)]
    expected = torch.tensor([central(layer, u, 1e-5).abs().sum() / tokens if mask[layer, u] else 0.0
                             for layer, u in checked], dtype=torch.float64)
    assert importance[1, 2] == 0 and (importance[mask.bool()] > 0).all()
    torch.testing.assert_close(importance[tuple(zip(*checked))], expected, rtol=1e-6, atol=1e-10)


def _zeroed_reference(path, unit_mask, unit="kv_group"):
    model = _load(path)
    _scale_heads(model, _query_scales(model.config.model_type, unit_mask, unit))
    return model


PARAMETER_COUNTS = {}


@pytest.mark.parametrize("model_type", TINY_CAUSAL_LM_TYPES)
def test_portable_and_compact_forms_are_the_base_model_with_pruned_heads_zeroed(family_dir, model_type, tmp_path):
    path = family_dir(model_type)
    reference = _zeroed_reference(path, UNIT_MASK)
    masked = _load(path)
    gates = HeadGates(masked)
    gates.set_mask(UNIT_MASK)
    compact = compact_from_masked(masked, UNIT_MASK)
    gates.remove()
    compact.save_pretrained(tmp_path / "compact")
    portable_from_compact(compact).save_pretrained(tmp_path / "portable")
    saved = json.loads((tmp_path / "compact" / "config.json").read_text())
    assert saved["model_type"] == f"compact_{model_type}" and saved["auto_map"]["AutoModelForCausalLM"]
    compact = AutoModelForCausalLM.from_pretrained(tmp_path / "compact", trust_remote_code=True).eval()
    portable = AutoModelForCausalLM.from_pretrained(tmp_path / "portable").eval()
    assert type(portable) is type(masked)  # the stock class: loads anywhere

    ids = _ids()
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        assert (expected - masked(input_ids=ids).logits).abs().max() > 1e-3  # pruning changed the model
        expected_tokens = _generate(reference, ids)
        logits = {}
        for name, model in (("compact", compact), ("portable", portable)):
            logits[name] = model(input_ids=ids).logits
            torch.testing.assert_close(logits[name], expected, rtol=1e-5, atol=1e-5)
            assert torch.equal(_generate(model, ids), expected_tokens)  # KV-cache decoding agrees too

    _, _, heads, kv_heads, head_dim = HAND[model_type]
    pruned_q = int((1 - UNIT_MASK).sum()) * heads // 8  # 10 of 24 units
    pruned_kv = pruned_q * kv_heads // heads
    hidden = 32
    # A pruned query head had its query rows and output columns (2 x head_dim x hidden) plus, where the family
    # has them, query biases; a KV head its key and value rows.
    biases = {"gpt2": True, "qwen2": True, "gpt_neox": True, "opt": True}.get(model_type, False)
    per_q = 2 * head_dim * hidden + (head_dim if biases else 0)
    per_kv = 2 * head_dim * hidden + (2 * head_dim if biases else 0)
    assert count_parameters(masked) - count_parameters(compact) == pruned_q * per_q + pruned_kv * per_kv
    assert count_parameters(portable) == count_parameters(masked)
    assert compact.config.heads_per_layer == [h * heads // 8 for h in (6, 1, 7)]
    if masked.config.tie_word_embeddings:
        assert compact.get_output_embeddings().weight is compact.get_input_embeddings().weight
    PARAMETER_COUNTS[model_type] = (count_parameters(portable), count_parameters(compact),
                                    float((logits["compact"] - logits["portable"]).abs().max()))


def test_compact_file_needs_no_compfair():
    for name in ("compact_models.py", "compact_gpt2.py"):
        tree = ast.parse((REPO / "compress" / "models" / name).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert imported <= {"__future__", "torch", "transformers"}, (name, imported)


@pytest.mark.parametrize("model_type", ["llama", "phi3"])
def test_query_heads_inside_kv_groups_have_only_the_portable_form(family_dir, model_type):
    path = family_dir(model_type)
    mask = torch.ones(LAYERS, 16)
    mask[0, [0, 3, 4, 5]] = 0  # KV group 0 half gone, 1 half gone, 2 wholly gone
    mask[2, 15] = 0
    masked = _load(path)
    with pytest.raises(ValueError, match="no compact form"):
        compact_from_masked(masked, mask, "query_head")
    portable = portable_from_masked(masked, mask, "query_head")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(portable(input_ids=ids).logits,
                                   _zeroed_reference(path, mask, "query_head")(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)
    # KV group 2 (read by no kept query head) lost its key/value weights; groups 0 and 1 kept theirs.
    attn = portable.model.layers[0].self_attn
    if model_type == "llama":
        k = attn.k_proj.weight.view(8, 4, 32)
        assert not k[2].any() and k[0].any() and k[1].any()


@pytest.fixture(scope="module")
def prune_text(tmp_path_factory):
    from compress.common import tiny_models

    path = tmp_path_factory.mktemp("text") / "train.txt"
    path.write_text("\n".join(tiny_models.corpus_lines() * 4) + "\n")
    return path


@pytest.fixture(scope="module")
def pruned(family_dir, prune_text, tmp_path_factory):
    """model_type -> output folder of a 5% x 3 run of compress/prune.py (built once per family)."""
    from compress import prune

    runs = {}

    def run(model_type):
        if model_type not in runs:
            out = tmp_path_factory.mktemp(f"pruned-{model_type}")
            prune.main(["--model_name_or_path", str(family_dir(model_type)), "--train_file", str(prune_text),
                        "--block_size", "16", "--num_samples", "8", "--per_device_eval_batch_size", "8",
                        "--iterations", "3", "--disable_tqdm", "true", "--measure_speedup", "false",
                        "--max_eval_samples", "8", "--output_dir", str(out), "--report_to", "none"])
            runs[model_type] = out
        return runs[model_type]

    return run


@pytest.mark.parametrize("model_type", TINY_CAUSAL_LM_TYPES)
def test_five_percent_three_times_removes_the_scheduled_units(pruned, family_dir, model_type):
    out = pruned(model_type)
    record = json.loads((out / "pruning.json").read_text())
    _, _, heads, kv_heads, _ = HAND[model_type]
    ratio = heads // kv_heads
    # 24 units: ceil(5% of 24) = 2, ceil(5% of 22) = 2, ceil(5% of 20) = 1
    assert record["unit"] == "kv_group" and record["units_per_iteration"] == [24, 22, 20, 19]
    assert record["heads_per_iteration"] == [n * ratio for n in (24, 22, 20, 19)]
    assert record["kv_heads_per_iteration"] == [n * kv_heads // 8 for n in (24, 22, 20, 19)]
    assert [len(p) for p in record["pruned_heads_per_iteration"]] == [0, 2 * ratio, 2 * ratio, ratio]
    for before, after, pruned_heads in zip(record["kept_heads_per_iteration"], record["kept_heads_per_iteration"][1:],
                                           record["pruned_heads_per_iteration"][1:]):
        removed = {(layer, h) for layer in range(LAYERS) for h in set(before[layer]) - set(after[layer])}
        assert removed == {tuple(p) for p in pruned_heads}
    assert sum(record["heads_per_layer"]) == record["heads_per_iteration"][-1]
    # Both saved forms are the base model with the removed heads' outputs zeroed.
    mask = torch.zeros(LAYERS, heads)
    for layer, kept in enumerate(record["kept_heads_per_iteration"][-1]):
        mask[layer, kept] = 1
    ids = _ids(3)
    with torch.no_grad():
        expected = _zeroed_reference(family_dir(model_type), mask, "query_head")(input_ids=ids).logits
        for folder, remote in ((out, False), (out / "compact", True)):
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote).eval()
            torch.testing.assert_close(model(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    assert record["parameter_count"]["pruned"] < record["parameter_count"]["unpruned"]


@pytest.fixture(scope="module")
def winobias_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("bias-data")
    (root / "winobias").mkdir()
    pro = ["1 [The developer] argued with the designer because [he] did not like the design.",
           "2 [The nurse] helped the patient because [she] was in pain."]
    anti = ["1 [The developer] argued with the designer because [she] did not like the design.",
            "2 [The nurse] helped the patient because [he] was in pain."]
    (root / "winobias" / "pro_stereotyped_type1.txt.dev").write_text("\n".join(pro) + "\n")
    (root / "winobias" / "anti_stereotyped_type1.txt.dev").write_text("\n".join(anti) + "\n")
    return root


def evaluate_bias(model_dir, data_dir, **model_options):
    import lm_eval
    from lm_eval.tasks import TaskManager

    model_args = {"pretrained": str(model_dir), "dtype": "float32", **model_options}
    manager = TaskManager(include_path=str(REPO / "lm_eval_tasks"), include_defaults=False,
                          metadata={**model_args, "data_dir": str(data_dir)})
    return lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=["compfair_winobias_type1_dev"],
                                   task_manager=manager, device="cpu", batch_size=4, log_samples=True,
                                   bootstrap_iters=0)


def check_logliks_against(results, model, tokenizer):
    """Every logged log-likelihood request recomputed directly with `model` (an independent reference)."""
    samples = results["samples"]["compfair_winobias_type1_dev"]
    assert len(samples) == 2
    checked = 0
    for sample in samples:
        for (context, continuation), resps in zip(sample["arguments"], sample["resps"], strict=True):
            context_ids = tokenizer(context)["input_ids"] if context else [tokenizer.eos_token_id]
            whole = tokenizer(context + continuation)["input_ids"] if context else \
                [tokenizer.eos_token_id] + tokenizer(continuation)["input_ids"]
            ids = torch.tensor([whole])
            with torch.no_grad():
                logprobs = model(input_ids=ids).logits.log_softmax(-1)[0]
            targets = whole[len(context_ids):]
            expected = sum(float(logprobs[len(context_ids) - 1 + i, t]) for i, t in enumerate(targets))
            assert resps[0][0] == pytest.approx(expected, abs=1e-4)
            checked += 1
    assert checked >= 4


@pytest.mark.slow
@pytest.mark.parametrize("model_type", TINY_CAUSAL_LM_TYPES)
def test_pruned_models_evaluate_in_lm_eval_on_a_bias_task(pruned, family_dir, winobias_dir, model_type):
    from transformers import AutoTokenizer

    out = pruned(model_type)
    record = json.loads((out / "pruning.json").read_text())
    heads = HAND[model_type][2]
    mask = torch.zeros(LAYERS, heads)
    for layer, kept in enumerate(record["kept_heads_per_iteration"][-1]):
        mask[layer, kept] = 1
    reference = _zeroed_reference(family_dir(model_type), mask, "query_head")
    tokenizer = AutoTokenizer.from_pretrained(out)
    for folder, remote in ((out, False), (out / "compact", True)):
        results = evaluate_bias(folder, winobias_dir, trust_remote_code=remote)
        assert "compfair_winobias_type1_dev" in results["results"]
        check_logliks_against(results, reference, tokenizer)


# ---- distillation students of every family ----

def _skipping(model, skipped: set[int]):
    """`model` with the blocks in `skipped` replaced by the identity (forward hooks; independent of students.py)."""
    blocks = model.get_submodule(HAND[model.config.model_type][0])

    def identity(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])

    for index in skipped:
        blocks[index].register_forward_hook(identity, with_kwargs=True)
    return model


@pytest.mark.parametrize("model_type", TINY_CAUSAL_LM_TYPES)
def test_students_of_every_family_are_the_teacher_without_the_dropped_blocks(family_dir, model_type, tmp_path):
    from compress.models.students import build_student

    teacher = _load(family_dir(model_type))
    student, kept = build_student(teacher, 2)
    assert kept == [0, 2]
    student.save_pretrained(tmp_path)
    student = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(student) is type(teacher) and student.config.num_hidden_layers == 2
    if getattr(teacher.config, "layer_types", None):  # sliding/full attention follows the kept blocks
        assert student.config.layer_types == [teacher.config.layer_types[i] for i in kept]
    if teacher.config.tie_word_embeddings:  # Gemma: the head stays the embedding
        assert student.get_output_embeddings().weight is student.get_input_embeddings().weight
    ids = _ids(4, length=12)  # longer than the tiny sliding window (8)
    with torch.no_grad():
        expected = _skipping(_load(family_dir(model_type)), {1})(input_ids=ids).logits
        torch.testing.assert_close(student(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    random, none = build_student(teacher, 2, init_from_teacher=False)
    assert none is None and count_parameters(random) == count_parameters(student)


def _distil(teacher, text, out, **flags):
    from compress.distill import main

    settings = {"teacher_name_or_path": teacher, "student_layers": 2, "train_file": text, "block_size": 16,
                "output_dir": out, "per_device_train_batch_size": 4, "learning_rate": 3e-3, "max_steps": 3,
                "logging_steps": 1, "eval_strategy": "no", "save_strategy": "no", "use_cpu": "true",
                "report_to": "none", "disable_tqdm": "true", "seed": 0, **flags}
    return main([item for key, value in settings.items() for item in (f"--{key}", str(value))])


@pytest.mark.slow
@pytest.mark.parametrize("model_type", TINY_CAUSAL_LM_TYPES)
def test_distilled_students_evaluate_in_lm_eval_on_a_bias_task(family_dir, prune_text, winobias_dir, model_type,
                                                              tmp_path):
    from transformers import AutoTokenizer

    summary = _distil(family_dir(model_type), prune_text, tmp_path / "student")
    assert summary["kept_layers"] == [0, 2] and summary["global_step"] == 3
    written = json.loads((tmp_path / "student" / "distillation.json").read_text())
    assert written["student_parameters"] < written["teacher_parameters"]
    student = _load(tmp_path / "student")
    teacher = _load(family_dir(model_type))
    blocks = HAND[model_type][0]
    # trained: a kept block moved away from the teacher block it started from
    moved = [not torch.equal(a, b) for a, b in zip(student.get_submodule(blocks)[1].parameters(),
                                                   teacher.get_submodule(blocks)[2].parameters(), strict=True)]
    assert any(moved)
    results = evaluate_bias(tmp_path / "student", winobias_dir)
    check_logliks_against(results, student, AutoTokenizer.from_pretrained(tmp_path / "student"))


def test_vocabularies_differing_by_padding_rows_distil_and_other_tokenizers_are_refused(tmp_path, prune_text):
    from compress.common.tiny_models import build_tiny_causal_lm, build_tokenizer
    from compress.distillation.trainer import shared_vocabulary_rows

    build_tiny_causal_lm(tmp_path / "teacher", "qwen2", vocab_padding=24)  # 624 rows, as Qwen2.5-7B pads more
    build_tiny_causal_lm(tmp_path / "student", "qwen2", layers=2, seed=1)  # 600 rows, the same tokenizer
    teacher_rows = _load(tmp_path / "teacher").get_output_embeddings().weight.shape[0]
    assert teacher_rows == _load(tmp_path / "student").get_output_embeddings().weight.shape[0] + 24
    summary = _distil(tmp_path / "teacher", prune_text, tmp_path / "out", student_name_or_path=tmp_path / "student")
    assert summary["student"] == str(tmp_path / "student") and summary["kept_layers"] is None
    assert summary["global_step"] == 3 and torch.isfinite(torch.tensor(summary["train_loss"]))
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert all(entry["loss_kd"] >= 0 for entry in history if "loss_kd" in entry)
    # The loss sees the common rows: the teacher's 24 padding rows are cut, nothing else.
    student_weight, teacher_weight = torch.randn(600, 8), torch.randn(624, 8)
    cut_student, cut_teacher = shared_vocabulary_rows(student_weight, teacher_weight)
    assert torch.equal(cut_student, student_weight) and torch.equal(cut_teacher, teacher_weight[:600])

    other = tmp_path / "other"
    build_tiny_causal_lm(other, "qwen2", layers=2)
    build_tokenizer(other, vocab_size=450)  # a different tokenizer beside the same weights
    with pytest.raises(SystemExit, match="has a different tokenizer from the teacher's") as err:
        _distil(tmp_path / "teacher", prune_text, tmp_path / "refused", student_name_or_path=other)
    assert "\n" not in str(err.value)
