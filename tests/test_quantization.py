"""Post-training quantization (compress/quantize.py) on a tiny GPT-2 and a tiny Llama with grouped-query attention.

The Llama checkpoints are compressed-tensors pack-quantized (loaded by transformers on CPU through the
compressed-tensors package); GPT-2's Conv1D layers cannot be, so they are written dequantized. Each check reloads
the checkpoint the way a user would and compares with an independent computation: round-to-nearest transcribed
from its definition in compressed-tensors' convention, the layer output error on activations captured here,
and byte counts read back from the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from compress import quantize
from compress.common import tiny_models
from compress.quantization import checkpoint

BLOCK, SAMPLES, GROUP = 16, 8, 32
# Tolerance on ||logits_q - logits||_F / ||logits||_F over a batch of random token ids.
TOLERANCE = {8: 0.02, 4: 0.2}
LINEARS = {
    "gpt2": ("transformer.h", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"], 4),
    "llama": ("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"], 2),
}


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text(tiny_models.CORPUS * 3, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tiny_gpt2, tiny_llama):
    return {"gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(scope="module")
def quantized(models, calib_file, tmp_path_factory):
    done = {}

    def make(arch: str, method: str) -> Path:
        if (arch, method) not in done:
            out = tmp_path_factory.mktemp(f"quant-{arch}-{method}") / "out"
            record = quantize.main(["--model_name_or_path", str(models[arch]), "--output_dir", str(out),
                                    "--method", method, "--group_size", str(GROUP if method != "int8" else 0),
                                    "--train_file", str(calib_file), "--block_size", str(BLOCK),
                                    "--num_samples", str(SAMPLES), "--calibration_batch_size", "3"])
            assert record is not None and (out / "quantization.json").is_file()
            done[(arch, method)] = out
        return done[(arch, method)]

    return make


def load(folder: Path):
    """The model as lm-eval gets it; a compressed-tensors one decompresses on its first forward pass."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 2, dtype=torch.long))
    return model


def weights(model, arch: str) -> dict[str, torch.Tensor]:
    prefix, names, layers = LINEARS[arch]
    out = {}
    for i in range(layers):
        for n in names:
            w = model.get_submodule(f"{prefix}.{i}.{n}").weight.detach().float()
            out[f"{prefix}.{i}.{n}"] = w.t() if arch == "gpt2" else w
    return out


def rtn_transcription(w: torch.Tensor, bits: int, group: int | None) -> torch.Tensor:
    """Symmetric round-to-nearest, per output row and group of `group` inputs: s = max|w| / ((2^b - 1) / 2),
    q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1) (compressed-tensors' calculate_qparams / quantize)."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // (group or cols), group or cols)
    s = g.abs().amax(-1, keepdim=True) / ((2 ** bits - 1) / 2)
    q = torch.clamp(torch.round(g / s), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return (q * s).reshape(rows, cols)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method, bits", [("int8", 8), ("int4", 4)])
def test_round_to_nearest_matches_definition(quantized, models, arch, method, bits):
    out = quantized(arch, method)
    record = json.loads((out / "quantization.json").read_text())
    assert record["format"] == ("compressed-tensors" if arch == "llama" else "dequantized")
    if arch == "llama":  # really packed: int32 codes and scales, no dense weight
        tensors = load_file(str(out / "model.safetensors"))
        assert tensors["model.layers.0.self_attn.q_proj.weight_packed"].dtype == torch.int32
        assert "model.layers.0.self_attn.q_proj.weight" not in tensors
    dense = weights(AutoModelForCausalLM.from_pretrained(models[arch]), arch)
    reloaded = weights(load(out), arch)
    for name, w in dense.items():
        expected = rtn_transcription(w, bits, GROUP if bits == 4 else None)
        assert not torch.equal(reloaded[name], w), f"{name} was not quantized"
        torch.testing.assert_close(reloaded[name], expected, rtol=0, atol=1e-6, msg=name)
        for row in reloaded[name].reshape(-1, GROUP if bits == 4 else w.shape[1])[:8]:  # at most 2^b levels each
            assert row.unique().numel() <= 2 ** bits


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["int8", "int4", "gptq", "awq"])
def test_logits_within_tolerance(quantized, models, arch, method):
    out = quantized(arch, method)
    bits = json.loads((out / "quantization.json").read_text())["bits"]
    ids = torch.randint(0, 500, (4, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dense = AutoModelForCausalLM.from_pretrained(models[arch])(ids).logits
        q = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    relative = ((q - dense).norm() / dense.norm()).item()
    assert 0 < relative <= TOLERANCE[bits], f"{arch} {method}: relative logit error {relative:.4f}"


def block0_inputs(model, arch: str, calib_file: Path, tokenizer_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    from compress.common.calibration import CalibrationData, calibration_blocks

    ids = calibration_blocks(CalibrationData(train_file=str(calib_file), block_size=BLOCK),
                             AutoTokenizer.from_pretrained(tokenizer_dir), SAMPLES, seed=0)
    prefix, names, _ = LINEARS[arch]
    seen = {n: [] for n in names}
    handles = [model.get_submodule(f"{prefix}.0.{n}").register_forward_hook(
        lambda m, a, o, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1]))) for n in names]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return {f"{prefix}.0.{n}": torch.cat(v) for n, v in seen.items()}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gptq_reconstructs_better_than_round_to_nearest(quantized, models, calib_file, arch):
    dense_model = AutoModelForCausalLM.from_pretrained(models[arch])
    inputs = block0_inputs(dense_model, arch, calib_file, models[arch])
    dense = weights(dense_model, arch)
    gptq = weights(load(quantized(arch, "gptq")), arch)
    rtn = weights(load(quantized(arch, "int4")), arch)
    for name, x in inputs.items():
        error = {label: ((x @ w[name].t() - x @ dense[name].t()) ** 2).sum().item()
                 for label, w in (("gptq", gptq), ("rtn", rtn))}
        assert error["gptq"] < error["rtn"], f"{name}: {error}"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_awq_scales_are_folded(quantized, models, arch):
    out = quantized(arch, "awq")
    record = json.loads((out / "quantization.json").read_text())
    groups = [g for block in record["settings"]["scales"] for g in block["groups"]]
    if arch == "llama":  # grouped-query attention: v_proj -> o_proj cannot take a scale
        assert {g["producer"] for g in groups if "skipped" in g} == {"self_attn.v_proj"}
    searched = [g for g in groups if "alpha" in g]
    assert searched and all(g["error_vs_round_to_nearest"] <= 1 for g in searched)
    assert any(g["alpha"] > 0 for g in searched), "no group chose a scale"
    dense = AutoModelForCausalLM.from_pretrained(models[arch])
    awq = load(out)
    norm = "transformer.h.0.ln_1.weight" if arch == "gpt2" else "model.layers.0.input_layernorm.weight"
    first = next(g for g in searched if g["producer"] in ("ln_1", "input_layernorm"))
    changed = not torch.equal(dense.get_parameter(norm), awq.get_parameter(norm))
    assert changed == (first["alpha"] > 0), "the first norm's scale was not folded"


def test_record_bytes_and_theoretical_size(quantized):
    out = quantized("llama", "int4")
    record = json.loads((out / "quantization.json").read_text())
    assert (record["method"], record["bits"], record["group_size"]) == ("int4", 4, GROUP)
    on_disk = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*")
               if p.is_file() and p.name != "quantization.json"}
    assert record["bytes"]["files"] == on_disk and record["bytes"]["checkpoint_bytes"] == sum(on_disk.values())
    tensors = load_file(str(out / "model.safetensors"))
    linear = sum(t.numel() * t.element_size() for k, t in tensors.items() if "_proj.weight" in k)
    assert record["bytes"]["linear_weight_bytes"] == linear
    # hand count: 2 blocks of q,o (64x64), k,v (32x64), gate,up (128x64), down (64x128); 4 bits + fp32 scale per 32
    params = 2 * (2 * 64 * 64 + 2 * 32 * 64 + 2 * 128 * 64 + 64 * 128)
    assert record["linear_parameters"] == params
    theoretical = params // 2 + params // GROUP * 4
    assert abs(linear - theoretical) / theoretical < 0.05
    assert record["bytes"]["source_linear_weight_bytes"] == params * 4


def test_evaluates_through_lm_eval(quantized, tmp_path):
    """The compressed-tensors checkpoint loads in lm-eval's hf model and scores a compfair task."""
    from importlib import resources

    import lm_eval
    from lm_eval.tasks import TaskManager

    out = quantized("llama", "gptq")
    data = resources.files("compress.study") / "demo_data"
    tasks = Path(__file__).resolve().parents[1] / "lm_eval_tasks"
    manager = TaskManager(include_path=str(tasks), include_defaults=False,
                          metadata={"pretrained": str(out), "data_dir": str(data)})
    results = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": str(out), "dtype": "float32"},
                                      tasks=["compfair_winobias_type1_dev"], task_manager=manager, device="cpu",
                                      batch_size=8, log_samples=True, bootstrap_iters=0, limit=4)
    samples = results["samples"]["compfair_winobias_type1_dev"]
    assert samples, "no document was scored"
    # the first request's log-likelihood, recomputed here with the reloaded quantized model
    from transformers import AutoTokenizer

    context, continuation = samples[0]["arguments"][0]
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert context == ""  # WinoBias scores whole sentences: lm-eval puts the EOS token before them
    ctx = [tok.eos_token_id]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = model(ids).logits.log_softmax(-1)[0, len(ctx) - 1:-1]
    expected = logprobs.gather(1, torch.tensor(cont).unsqueeze(1)).sum().item()
    assert samples[0]["resps"][0][0][0] == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("flags, message", [
    (["--method", "int4", "--bits", "8"], "bits=8 is not supported by method int4"),
    (["--method", "gptq", "--bits", "3"], "bits=3 is not supported by method gptq"),
    (["--method", "int4", "--group_size", "48"], "group_size=48 does not divide"),
    (["--method", "gptq", "--group_size", "32", "--num_samples", "5000"], "fewer than num_samples=5000"),
    (["--method", "awq", "--group_size", "32", "--train_file", "/nonexistent/c.txt"], "/nonexistent/c.txt not found"),
    (["--method", "int9"], "method must be one of"),
])
def test_bad_input_one_line(models, calib_file, tmp_path, flags, message):
    argv = ["--model_name_or_path", str(models["llama"]), "--output_dir", str(tmp_path / "o"),
            "--train_file", str(calib_file), "--block_size", str(BLOCK), *flags]
    with pytest.raises(SystemExit) as stop:
        quantize.main(argv)
    text = str(stop.value.code)
    assert message in text and "\n" not in text, text


def test_missing_extra_names_it(models, tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "compressed_tensors_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        quantize.main(["--model_name_or_path", str(models["llama"]), "--output_dir", str(tmp_path / "o"),
                       "--method", "int8", "--format", "compressed-tensors"])
    assert "compfair[quant]" in str(stop.value.code)


def test_unsupported_architecture_and_rerun(tiny_seq2seq, quantized, models, tmp_path):
    with pytest.raises(SystemExit) as stop:
        quantize.main(["--model_name_or_path", str(tiny_seq2seq), "--output_dir", str(tmp_path / "o"),
                       "--method", "int8"])
    assert "model type 'blenderbot' is not supported" in str(stop.value.code)
    out = quantized("llama", "int8")
    assert quantize.main(["--model_name_or_path", str(models["llama"]), "--output_dir", str(out),
                          "--method", "int8"]) is None


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "trainer_configs" / "quantize")
                                          .glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(config):
    from compress.common.arguments import parse_config_and_flags
    from compress.common.calibration import CalibrationData
    from compress.quantization.config import QuantizeConfig

    settings, data = parse_config_and_flags((QuantizeConfig, CalibrationData), [str(config), "--seed", "3"])
    assert settings.method == config.stem and settings.seed == 3 and data.dataset_name == "Salesforce/wikitext"
