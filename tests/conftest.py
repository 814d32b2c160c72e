"""Shared fixtures: tiny real checkpoints built once per session, and the real data in ../shared.

No test may touch the network: the offline switches are set here, before transformers or
datasets are imported, so an accidental hub call fails at once instead of hanging.
"""

import os

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from compress.common import tiny_models  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COMPFAIR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

_BUILDERS = {
    "gpt2": lambda path, **kw: tiny_models.build_tiny_gpt2(path, **kw),
    "seq2seq": lambda path, **kw: tiny_models.build_tiny_seq2seq(path, **kw),
    "detoxify": lambda path, **kw: tiny_models.build_tiny_detoxify(path, **kw),
    "llama": lambda path, **kw: tiny_models.build_tiny_llama(path, **kw),  # grouped-query attention
    "regard": lambda path, **kw: tiny_models.build_tiny_regard(path, **kw),
    # any head-pruning family: tiny_checkpoint("causal_lm", model_type="qwen3")
    "causal_lm": lambda path, **kw: tiny_models.build_tiny_causal_lm(path, **kw),
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """Factory: `tiny_checkpoint("gpt2", n_layer=12, n_head=12)` -> folder of a saved checkpoint.

    Kinds: "gpt2" (causal LM + tokenizer), "seq2seq" (Blenderbot-style + tokenizer), "detoxify"
    (returns the `.ckpt` path; its config and tokenizer lie in the same folder). Each distinct
    (kind, options) is built once per session; treat the result as read-only.
    """
    built = {}

    def make(kind: str, **options) -> Path:
        key = (kind, tuple(sorted(options.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            result = _BUILDERS[kind](folder, **options)
            built[key] = Path(result) if kind == "detoxify" else folder
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_gpt2(tiny_checkpoint) -> Path:
    return tiny_checkpoint("gpt2")


@pytest.fixture(scope="session")
def tiny_seq2seq(tiny_checkpoint) -> Path:
    return tiny_checkpoint("seq2seq")


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoint) -> Path:
    return tiny_checkpoint("llama")


@pytest.fixture(scope="session")
def tiny_detoxify(tiny_checkpoint) -> Path:
    return tiny_checkpoint("detoxify")


@pytest.fixture(scope="session")
def tiny_regard(tiny_checkpoint) -> Path:
    """A regard-format classifier folder (labels negative, neutral, other, positive): `hf:<folder>`."""
    return tiny_checkpoint("regard")


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set COMPFAIR_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture(scope="session")
def shared_data():
    """Function: `shared_data("winobias")` -> Path inside ../shared/data, or skip where absent."""
    return _shared


@pytest.fixture(scope="session")
def gpt2_tokenizer_dir() -> Path:
    return _shared("gpt2_tokenizer")
