"""Tiny, real Hugging Face checkpoints built on the spot, with no network.

The test suite and `make demo` both need models that load through the exact code paths the real
ones do (`AutoModelForCausalLM.from_pretrained`, lm-eval's `hf` model, `detoxify.Detoxify`), but
the machines they run on cannot reach the Hugging Face Hub. Everything here is built from an
embedded corpus: a byte-level BPE tokenizer trained with `tokenizers`, a randomly initialised
GPT-2, a Blenderbot-style seq2seq model, and a Detoxify-format toxicity classifier.
"""

from __future__ import annotations

from pathlib import Path

import torch

# A small English corpus, enough for a BPE tokenizer to learn common words and for a tiny model
# to learn something in a few hundred steps. Written for the project; it also covers the
# vocabulary of the demo prompts and bias sentences.
CORPUS = """\
The developer argued with the designer because she did not like the design.
The nurse helped the patient because he was in pain after the surgery.
The mechanic fixed the car and the customer paid him for the work.
The secretary called the manager because she needed a signature on the report.
The doctor told the receptionist that he would be late for the meeting.
The teacher praised the student because her essay was clear and well argued.
The lawyer asked the clerk for the files because they were due in court today.
The chief thanked the cook because the dinner was ready on time.
People in the city walk to work in the morning and take the train home at night.
The weather was cold and the river was frozen, so the children stayed inside.
My friend said the movie was boring, but I thought the ending was great.
You are a stupid idiot and nobody likes you or your ugly face.
Shut up, you worthless fool, this is the dumbest thing I have ever read.
What a pathetic loser, go away and never come back here again.
I hate you and everything you stand for, you disgusting liar.
Thank you for the helpful edit, the article reads much better now.
Please add a source for this claim before you change the page again.
The article about the old bridge needs more citations and a better lead.
I think we should discuss this on the talk page before reverting again.
The committee met on Tuesday to review the budget for the new school.
Scientists found that the new material conducts heat better than copper.
The team won the game in the last minute after a long and hard season.
She opened the window and listened to the birds singing in the garden.
He is good at math and she is good at reading, said the old stereotype.
The engineer was careful and the librarian was quiet and kind.
Many people live in the village near the mountain and farm the land.
The musician played the piano while the audience sat in silence.
Cats have sharp claws and dogs like to chase balls in the park.
"""

SPECIAL_TOKEN = "<|endoftext|>"
TOXICITY_CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


def corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]


def build_tokenizer(out_dir: str | Path, vocab_size: int = 600):
    """Train a byte-level BPE tokenizer (GPT-2 style) on the embedded corpus and save it as a GPT2TokenizerFast."""
    return train_bpe_tokenizer(corpus_lines() * 4, vocab_size, out_dir, min_frequency=1, model_max_length=128)


def train_bpe_tokenizer(lines, vocab_size: int, out_dir: str | Path, min_frequency: int = 2,
                        model_max_length: int = 128):
    """A byte-level BPE tokenizer (GPT-2's kind, one special token for BOS/EOS/UNK) trained on `lines`, saved."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=vocab_size, min_frequency=min_frequency,
                            special_tokens=[SPECIAL_TOKEN], show_progress=False)
    tok = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
                            unk_token=SPECIAL_TOKEN, model_max_length=model_max_length)
    tok.save_pretrained(out_dir)
    return tok


def build_tiny_gpt2(out_dir: str | Path, n_layer: int = 4, n_head: int = 4, n_embd: int = 32,
                    n_positions: int = 128, seed: int = 0):
    """A randomly initialised GPT-2 with its own freshly trained tokenizer, saved to `out_dir`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(out_dir)
    return model, tok


def build_tiny_seq2seq(out_dir: str | Path, layers: int = 2, d_model: int = 32, heads: int = 4, seed: int = 0):
    """A randomly initialised Blenderbot-architecture encoder-decoder with the tiny BPE tokenizer."""
    from transformers import BlenderbotConfig, BlenderbotForConditionalGeneration

    tok = build_tokenizer(out_dir)
    eos = tok.eos_token_id
    torch.manual_seed(seed)
    config = BlenderbotConfig(
        vocab_size=len(tok), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model, max_position_embeddings=128, pad_token_id=eos, bos_token_id=eos,
        eos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=None,
    )
    model = BlenderbotForConditionalGeneration(config)
    model.save_pretrained(out_dir)
    return model, tok


def _wordpiece_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w.strip(".,!?\"'").lower() for line in corpus_lines() for w in line.split()})
    chars = sorted({c for w in words for c in w})
    return specials + [w for w in words if w] + [f"##{c}" for c in chars] + list(".,!?'\"")


TOXIC_WORDS = {"stupid", "idiot", "worthless", "fool", "dumbest", "pathetic", "loser", "hate", "disgusting", "liar",
               "ugly", "shut"}


def _fit_toxicity(model, tokenizer, steps: int) -> None:
    """A few optimiser steps so the tiny classifier separates the corpus's insults from the rest.

    A random classifier scores every text near 0.5, which makes thresholded metrics (toxicity >
    0.5) flip on noise; a fitted one gives scores spread towards 0 and 1, as the real one does.
    """
    lines = corpus_lines()
    is_toxic = [float(any(w.strip(".,!?").lower() in TOXIC_WORDS for w in line.split())) for line in lines]
    batch = tokenizer(lines, return_tensors="pt", padding=True)
    labels = torch.tensor(is_toxic).unsqueeze(1).expand(-1, model.config.num_labels).contiguous()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def build_tiny_detoxify(out_dir: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0,
                        train_steps: int = 60) -> Path:
    """A Detoxify-format checkpoint (`{"config", "state_dict"}`) for a tiny BERT classifier.

    Detoxify loads `config.arch.args.model_type` by name with `from_pretrained`; pointing it at the
    local folder that also holds `config.json` and the tokenizer files keeps the whole load offline. Load
    it with `Detoxify(checkpoint=ckpt, huggingface_config_path=ckpt.parent)`.
    The classifier is briefly fitted on the embedded corpus so that insults score high and other
    text low. Returns the path of the `.ckpt` file.
    """
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(_wordpiece_vocab())}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=64,
                        num_labels=len(TOXICITY_CLASSES), problem_type="multi_label_classification")
    model = BertForSequenceClassification(config)
    _fit_toxicity(model, tok, train_steps)
    config.save_pretrained(out_dir)
    checkpoint = {
        "config": {
            "arch": {"args": {"model_type": str(out_dir), "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "BertTokenizerFast", "num_classes": len(TOXICITY_CLASSES)}},
            "dataset": {"args": {"classes": TOXICITY_CLASSES}},
        },
        "state_dict": model.state_dict(),
    }
    ckpt = out_dir / "tiny-detoxify.ckpt"
    torch.save(checkpoint, ckpt)
    return ckpt


# ---------------------------------------------------------------------------------------------- Llama family


def build_tiny_llama(out_dir: str | Path, layers: int = 2, hidden_size: int = 64, heads: int = 4,
                     kv_heads: int = 2, intermediate_size: int = 128, seed: int = 0):
    """A randomly initialised Llama with grouped-query attention (`kv_heads` < `heads`) and the tiny BPE tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=128, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return model, tok


# ------------------------------------------------------------------- a regard-format classifier (BOLD)

REGARD_LABELS = ["negative", "neutral", "other", "positive"]  # the label names of sasha/regardv3
POSITIVE_WORDS = {"thank", "helpful", "better", "praised", "clear", "kind", "great", "won", "careful", "quiet",
                  "singing", "good"}


def build_tiny_regard(out_dir: str | Path, hidden_size: int = 32, layers: int = 2, seed: int = 0,
                      train_steps: int = 60) -> Path:
    """A Hugging Face sequence classifier with the regard labels (negative, neutral, other, positive), saved
    with its tokenizer in `out_dir` (load it as `hf:out_dir`). Briefly fitted on the embedded corpus: insults
    are negative, praise positive, the rest neutral, so its labels are not noise."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(_wordpiece_vocab())}
    tok = BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=64)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=64,
                        num_labels=len(REGARD_LABELS), id2label=dict(enumerate(REGARD_LABELS)),
                        label2id={label: i for i, label in enumerate(REGARD_LABELS)})
    model = BertForSequenceClassification(config)
    lines = corpus_lines()

    def label(line: str) -> int:
        words = {w.strip(".,!?").lower() for w in line.split()}
        if words & TOXIC_WORDS:
            return REGARD_LABELS.index("negative")
        return REGARD_LABELS.index("positive" if words & POSITIVE_WORDS else "neutral")

    batch = tok(lines, return_tensors="pt", padding=True)
    labels = torch.tensor([label(line) for line in lines])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(train_steps):
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir

# ---- Tiny decoder-only checkpoints of every head-pruning family (additive section) ----
#
# Every family gets the same head budget so that one schedule fits them all: 3 blocks of 8 prunable units
# (24 units: 5% x 3 removes 2, 2, 1). Grouped-query families have 16 query heads sharing 8 key/value heads
# (2 query heads per KV head); multi-head families have 8 heads. Gemma sets head_dim (8) apart from
# hidden_size / heads (2); Qwen2 has q/k/v biases; Qwen3 and Gemma 3 have per-head q/k norms; Phi-3 a fused
# qkv_proj; GPT-NeoX its per-head interleaved query_key_value; OPT biases everywhere.

TINY_CAUSAL_LM_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt_neox",
                        "opt")


def tiny_causal_lm_config(model_type: str, vocab_size: int, token_id: int = 0, layers: int = 3):
    """The config of a tiny random `model_type` model (see the section comment for the head layout)."""
    from transformers import AutoConfig

    hidden, positions = 32, 128
    ids = {"bos_token_id": token_id, "eos_token_id": token_id, "pad_token_id": token_id}
    gqa = {"hidden_size": hidden, "intermediate_size": 64, "num_hidden_layers": layers, "num_attention_heads": 16,
           "num_key_value_heads": 8, "head_dim": 4, "max_position_embeddings": positions, "tie_word_embeddings": False}
    settings = {
        "gpt2": {"n_embd": hidden, "n_layer": layers, "n_head": 8, "n_positions": positions},
        "llama": gqa,
        "mistral": {**gqa, "sliding_window": 8},
        "qwen2": gqa,
        "qwen3": gqa,
        "gemma2": {**gqa, "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 8, "tie_word_embeddings": True},
        "gemma3_text": {**gqa, "head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 8,
                        "tie_word_embeddings": True},
        "phi3": {**gqa, "original_max_position_embeddings": positions},
        "gpt_neox": {"hidden_size": hidden, "intermediate_size": 64, "num_hidden_layers": layers,
                     "num_attention_heads": 8, "max_position_embeddings": positions, "rotary_pct": 0.5,
                     "tie_word_embeddings": False},
        "opt": {"hidden_size": hidden, "ffn_dim": 64, "num_hidden_layers": layers, "num_attention_heads": 8,
                "word_embed_proj_dim": hidden, "max_position_embeddings": positions},
    }
    if model_type not in settings:
        raise ValueError(f"no tiny builder for model type {model_type!r} (have: {', '.join(settings)})")
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **ids, **settings[model_type])


def build_tiny_causal_lm(out_dir: str | Path, model_type: str = "llama", layers: int = 3, seed: int = 0,
                         vocab_padding: int = 0):
    """A randomly initialised `model_type` causal LM with the tiny BPE tokenizer, saved to `out_dir`.

    `vocab_padding` adds embedding rows no token uses (as Qwen2.5 pads its vocabulary to a round number).
    """
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(out_dir)
    config = tiny_causal_lm_config(model_type, len(tok) + vocab_padding, tok.eos_token_id, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # some families initialise norms or biases to constants; random values test more
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(out_dir)
    return model, tok
