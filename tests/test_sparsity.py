"""Post-training sparsity (compress/sparsify.py) on a tiny GPT-2 and a tiny Llama with grouped-query attention.

Every check reads the saved checkpoint's tensors and compares them with an independent computation: counts by
hand, Wanda's rule transcribed from the paper on activations captured here with our own hooks, and the
layer-wise reconstruction error computed from those activations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from compress import sparsify
from compress.common import tiny_models
from compress.common.calibration import CalibrationData, calibration_blocks

BLOCK, SAMPLES = 16, 8
LINEARS = {
    "gpt2": ("transformer.h", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
    "llama": ("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
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
def sparsified(models, calib_file, tmp_path_factory):
    """Factory: (arch, method, setting) -> output folder, each run once."""
    done = {}

    def make(arch: str, method: str, setting: str) -> Path:
        key = (arch, method, setting)
        if key not in done:
            out = tmp_path_factory.mktemp(f"sparse-{arch}-{method}") / "out"
            flag = ["--pattern", setting] if ":" in setting else ["--sparsity", setting]
            record = sparsify.main(["--model_name_or_path", str(models[arch]), "--output_dir", str(out),
                                    "--method", method, *flag, "--train_file", str(calib_file),
                                    "--block_size", str(BLOCK), "--num_samples", str(SAMPLES),
                                    "--calibration_batch_size", "3"])
            assert record is not None and (out / "sparsity.json").is_file()
            done[key] = out
        return done[key]

    return make


def out_in(arch: str, tensor: torch.Tensor) -> torch.Tensor:
    """Weight as [out, in]: GPT-2's Conv1D stores [in, out]."""
    return tensor.t() if arch == "gpt2" else tensor


def linear_weights(folder: Path, arch: str) -> dict[str, torch.Tensor]:
    tensors = load_file(str(folder / "model.safetensors"))
    prefix, names = LINEARS[arch]
    layers = 4 if arch == "gpt2" else 2
    return {f"{prefix}.{i}.{n}": out_in(arch, tensors[f"{prefix}.{i}.{n}.weight"])
            for i in range(layers) for n in names}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_exact_ratio(sparsified, models, arch, method):
    dense = linear_weights(models[arch], arch)
    sparse = linear_weights(sparsified(arch, method, "0.5"), arch)
    assert all((w == 0).sum() == 0 for w in dense.values()), "the dense model already has zeros"
    for name, w in sparse.items():
        rows, cols = w.shape
        if method == "wanda":  # per output row, as the paper compares
            assert ((w == 0).sum(1) == cols // 2).all(), name
        else:
            assert (w == 0).sum().item() == rows * cols // 2, name
        kept = w != 0
        if method != "sparsegpt":  # kept weights are unchanged; SparseGPT updates them
            assert torch.equal(w[kept], dense[name][kept]), name
        else:
            assert not torch.equal(w[kept], dense[name][kept]), f"{name}: SparseGPT did not update the kept weights"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_pattern(sparsified, arch, method):
    for name, w in linear_weights(sparsified(arch, method, "2:4"), arch).items():
        groups = (w == 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert (groups == 2).all(), f"{name}: a group of 4 inputs without exactly 2 zeros"


def captured_inputs(model, tokenizer_dir: Path, calib_file: Path, block_index: int, arch: str) -> dict:
    """Inputs of each linear layer of block `block_index` over every calibration token, by our own hooks."""
    from transformers import AutoTokenizer

    data = CalibrationData(train_file=str(calib_file), block_size=BLOCK)
    ids = calibration_blocks(data, AutoTokenizer.from_pretrained(tokenizer_dir), SAMPLES, seed=0)
    prefix, names = LINEARS[arch]
    block = model.get_submodule(f"{prefix}.{block_index}")
    seen = {n: [] for n in names}
    handles = [block.get_submodule(n).register_forward_hook(
        lambda m, a, o, n=n: seen[n].append(a[0].reshape(-1, a[0].shape[-1]).detach())) for n in names]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def dense_below_sparse(models, arch: str, sparse_dir: Path, block_index: int):
    """The dense model with blocks below `block_index` taken from the sparsified checkpoint."""
    model = AutoModelForCausalLM.from_pretrained(models[arch], dtype=torch.float32)
    sparse = AutoModelForCausalLM.from_pretrained(sparse_dir, dtype=torch.float32)
    prefix, _ = LINEARS[arch]
    for i in range(block_index):
        model.get_submodule(f"{prefix}.{i}").load_state_dict(sparse.get_submodule(f"{prefix}.{i}").state_dict())
    return model.eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_wanda_mask_is_the_papers_rule(sparsified, models, calib_file, arch):
    """Wanda: prune, per output row, the weights with the smallest |W_ij| * ||X_j||_2, X the inputs from the
    already-pruned blocks below (Sun et al. 2024, Eq. 1 and their prune_wanda)."""
    out = sparsified(arch, "wanda", "0.5")
    sparse = linear_weights(out, arch)
    prefix, names = LINEARS[arch]
    for block_index in (0, 1):
        model = dense_below_sparse(models, arch, out, block_index)
        inputs = captured_inputs(model, models[arch], calib_file, block_index, arch)
        for n in names:
            w = out_in(arch, model.get_submodule(f"{prefix}.{block_index}.{n}").weight.detach())
            metric = w.abs() * torch.sqrt((inputs[n] ** 2).sum(0)).reshape(1, -1)
            order = torch.sort(metric, dim=-1, stable=True)[1]
            expected = torch.zeros_like(metric, dtype=torch.bool)
            expected.scatter_(1, order[:, : w.shape[1] // 2], True)
            actual = sparse[f"{prefix}.{block_index}.{n}"] == 0
            assert torch.equal(actual, expected), f"block {block_index} {n}: mask differs from the paper's rule"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("setting", ["0.5", "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude(sparsified, models, calib_file, arch, setting):
    model = dense_below_sparse(models, arch, models[arch], 0)
    inputs = captured_inputs(model, models[arch], calib_file, 0, arch)
    dense = linear_weights(models[arch], arch)
    gpt = linear_weights(sparsified(arch, "sparsegpt", setting), arch)
    mag = linear_weights(sparsified(arch, "magnitude", setting), arch)
    prefix, names = LINEARS[arch]
    for n in names:
        key, x = f"{prefix}.0.{n}", inputs[n]
        error = {label: ((x @ w[key].t() - x @ dense[key].t()) ** 2).sum().item()
                 for label, w in (("sparsegpt", gpt), ("magnitude", mag))}
        assert error["sparsegpt"] < error["magnitude"], f"{key}: {error}"


def test_record_bytes_match_disk_and_reload(sparsified, models):
    out = sparsified("llama", "wanda", "0.5")
    record = json.loads((out / "sparsity.json").read_text())
    assert record["method"] == "wanda" and record["sparsity"] == 0.5 and record["pattern"] == "unstructured"
    assert record["calibration"]["num_samples"] == SAMPLES and record["calibration"]["seed"] == 0
    assert len(record["per_layer_sparsity"]) == 2 * 7 and all(v == 0.5 for v in record["per_layer_sparsity"].values())
    on_disk = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()
               and p.name != "sparsity.json"}
    assert record["bytes"]["files"] == on_disk
    assert record["bytes"]["checkpoint_bytes"] == sum(on_disk.values())
    tensors = load_file(str(out / "model.safetensors"))
    linear = sum(t.numel() * t.element_size() for k, t in tensors.items()
                 if k.endswith(".weight") and ("_proj" in k) and "layers" in k)
    assert record["bytes"]["linear_weight_bytes"] == linear
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    w = reloaded.model.layers[1].mlp.down_proj.weight
    assert (w == 0).float().mean().item() == 0.5
    assert sparsify.main(["--model_name_or_path", str(models["llama"]), "--output_dir", str(out),
                          "--method", "wanda", "--sparsity", "0.5"]) is None  # finished: a no-op


@pytest.mark.parametrize("flags, message", [
    (["--sparsity", "1.5"], "sparsity must be in (0, 1)"),
    (["--sparsity", "0"], "sparsity must be in (0, 1)"),
    (["--pattern", "4:4"], "need 0 < N < M"),
    (["--pattern", "2:5"], "M=5 does not divide"),
    (["--pattern", "two:four"], "pattern must be N:M"),
    (["--sparsity", "0.5", "--num_samples", "5000"], "fewer than num_samples=5000"),
    (["--sparsity", "0.5", "--train_file", "/nonexistent/calib.txt"], "/nonexistent/calib.txt not found"),
])
def test_bad_input_one_line(models, calib_file, tmp_path, flags, message):
    argv = ["--model_name_or_path", str(models["gpt2"]), "--output_dir", str(tmp_path / "o"), "--method", "wanda",
            "--train_file", str(calib_file), "--block_size", str(BLOCK), *flags]
    with pytest.raises(SystemExit) as stop:
        sparsify.main(argv)
    text = str(stop.value.code)
    assert message in text and "\n" not in text, text


def test_unsupported_architecture(tiny_seq2seq, tmp_path):
    with pytest.raises(SystemExit) as stop:
        sparsify.main(["--model_name_or_path", str(tiny_seq2seq), "--output_dir", str(tmp_path / "o"),
                       "--method", "magnitude", "--sparsity", "0.5"])
    text = str(stop.value.code)
    assert "model type 'blenderbot' is not supported" in text and "\n" not in text


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "trainer_configs" / "sparsify")
                                          .glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_parse(config):
    from compress.common.arguments import parse_config_and_flags
    from compress.sparsity.config import SparsityConfig

    settings, data = parse_config_and_flags((SparsityConfig, CalibrationData), [str(config), "--num_samples", "4"])
    assert settings.method == config.stem.split("_")[0] and settings.num_samples == 4
    assert (settings.n_m == (2, 4)) == config.stem.endswith("2of4")


def test_interrupted_run_restarts_cleanly(models, calib_file, tmp_path):
    """A run killed mid-way leaves OUT.partial (and maybe an OUT without record); the rerun replaces both."""
    out = tmp_path / "out"
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "model.safetensors").write_bytes(b"half a file")
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    record = sparsify.main(["--model_name_or_path", str(models["gpt2"]), "--output_dir", str(out), "--method",
                            "magnitude", "--sparsity", "0.25"])
    assert record is not None and not (tmp_path / "out.partial").exists() and not (out / "stale.txt").exists()
    assert json.loads((out / "sparsity.json").read_text())["overall_sparsity"] == 0.25
