# compfair: `make demo` runs the whole pipeline offline on a tiny embedded default; `make test` runs the tests.
# Every target creates the virtual environment first if it is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
# torch is installed on its own before the project so pip does not pick a build for you. The default
# is the plain PyPI release (a CPU wheel where one lies on disk). To keep a torch you already have,
# run `make install TORCH_SPEC= VENV_FLAGS=--system-site-packages`.
TORCH_SPEC ?= torch==2.13.0
VENV_FLAGS ?=
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# Study settings; override on the command line, e.g. `make distill CONFIG=B`.
CONFIG ?= A
SUBSET ?= 2560
ACCELERATE_CONFIG ?= trainer_configs/accelerate/single_gpu.yaml
RUNS ?= runs
DATA_DIR ?= $(RUNS)/prompts
RESULTS ?= $(RUNS)/eval
REPORT_DIR ?= $(RUNS)/report
ARGS ?=

.PHONY: help install install-dev test lint demo prompts distill distill-all prune prune-all report reproduce bench clean \
	quantize sparsify

help:
	@echo "make demo     the whole pipeline offline on a tiny embedded default (no GPU, no network)"
	@echo "make test     the test suite (offline)"
	@echo "make lint     ruff"
	@echo "make prompts | distill CONFIG=A | distill-all | prune SUBSET=2560 | prune-all | report | reproduce | bench"
	@echo "make quantize QUANT=gptq MODEL=gpt2 | sparsify SPARSE=wanda_2of4 MODEL=gpt2"
	@echo "make reproduce STUDY=modern [TEACHER=Qwen/Qwen2.5-0.5B] | demo STUDY=modern   one teacher, every method"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	@if [ -n "$(TORCH_SPEC)" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC) before the project (TORCH_SPEC= keeps your own torch)"; \
		$(PY) -m pip install --quiet "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install --quiet -e ".[quant]"
	touch $@

# The test and lint tools and the optional extras the tests cover, on top: `make test` and `make lint` need
# them, the pipeline does not. (The pipeline does take `quant`: with compressed-tensors installed,
# compress/quantize.py's `format: auto` writes packed checkpoints instead of dequantized ones.)
$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

test: install-dev
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(BIN)/ruff check .

# The study (compress/study.py): stages teacher, prompts, distill, prune, evaluate, report; each skips work
# already done, so an interrupted run resumes. MODELS=A,gpt2 and STAGES=distill,evaluate narrow it;
# STUDY_ARGS passes anything else (python -m compress.study --help).
MODELS ?=
STAGES ?=
STUDY_ARGS ?=
DEMO_RUNS ?= $(if $(filter modern,$(STUDY)),runs/demo_modern,runs/demo)
STUDY_NARROW = $(if $(MODELS),--models $(MODELS)) $(if $(STAGES),--stages $(STAGES)) $(STUDY_PRESET)
# STUDY=modern: one modern teacher (TEACHER=, default Qwen/Qwen2.5-0.5B) through every method at two or three
# strengths (compress/study/runner.py MODERN_PRESET); reproduce writes $(RUNS)/modern/<teacher>, the demo
# runs/demo_modern. STUDY=paper (the default) is the paper's study.
STUDY ?= paper
TEACHER ?=
STUDY_PRESET = --study $(STUDY) $(if $(TEACHER),--teacher $(TEACHER))

# Offline, on a tiny embedded default: a tiny teacher trained on the spot, six students, two pruned models,
# every toxicity and bias task on bundled samples, scored by a tiny Detoxify-format classifier.
demo: install
	$(OFFLINE) $(PY) -m compress.study demo --runs $(DEMO_RUNS) $(STUDY_NARROW) $(STUDY_ARGS)
	@echo "demo report: $(DEMO_RUNS)/report/report.html"

# Toxicity prompts into $(DATA_DIR): RTP from RTP_SOURCE (hub name or a local prompts.jsonl) and the three TCCC
# sets from TCCC_SOURCE (Kaggle's train.csv). Offline, pass TOKENIZER=/path/to/gpt2_tokenizer.
RTP_SOURCE ?= allenai/real-toxicity-prompts
TCCC_SOURCE ?=
TOKENIZER ?= gpt2
RTP_ARGS ?=
TCCC_ARGS ?=

prompts: install
	@test -n "$(TCCC_SOURCE)" || { echo "make prompts: set TCCC_SOURCE=/path/to/train.csv (Kaggle jigsaw-toxic-comment-classification-challenge)"; exit 1; }
	$(BIN)/compfair-prompts rtp --source $(RTP_SOURCE) --out $(DATA_DIR) --tokenizer $(TOKENIZER) $(RTP_ARGS)
	$(BIN)/compfair-prompts tccc --source $(TCCC_SOURCE) --out $(DATA_DIR) --tokenizer $(TOKENIZER) $(TCCC_ARGS)

# Distillation: student CONFIG (A, B, Bnot, C, D or Dnot) of GPT-2; writes $(RUNS)/students/CONFIG and resumes
# from its last checkpoint when re-run.
STUDENTS := A B Bnot C D Dnot

distill: install
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) compress/distill.py \
		trainer_configs/distill/$(CONFIG).yaml --output_dir $(RUNS)/students/$(CONFIG) $(ARGS)

distill-all: install
	@for student in $(STUDENTS); do $(MAKE) --no-print-directory distill CONFIG=$$student || exit 1; done

# Head pruning: importance on SUBSET WikiText-103 blocks (256, 1280, 2560, 5120 or 12800); writes $(RUNS)/pruned/wikitext_SUBSET.
PRUNE_SUBSETS := 256 1280 2560 5120 12800

prune: install
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) compress/prune.py \
		trainer_configs/prune/wikitext_$(SUBSET).yaml --output_dir $(RUNS)/pruned/wikitext_$(SUBSET) $(ARGS)

prune-all: install
	@for subset in $(PRUNE_SUBSETS); do $(MAKE) --no-print-directory prune SUBSET=$$subset || exit 1; done

# Post-training quantization and sparsity of MODEL (hub id or folder) with trainer_configs/quantize/QUANT.yaml
# (int8, int4, gptq, awq) or trainer_configs/sparsify/SPARSE.yaml (magnitude_50, wanda_50, sparsegpt_50, wanda_2of4,
# sparsegpt_2of4); writes $(RUNS)/quantized/QUANT or $(RUNS)/sparse/SPARSE with quantization.json / sparsity.json.
MODEL ?= gpt2
QUANT ?= gptq
SPARSE ?= wanda_50

quantize: install
	$(PY) compress/quantize.py trainer_configs/quantize/$(QUANT).yaml --model_name_or_path $(MODEL) \
		--output_dir $(RUNS)/quantized/$(QUANT) $(ARGS)

sparsify: install
	$(PY) compress/sparsify.py trainer_configs/sparsify/$(SPARSE).yaml --model_name_or_path $(MODEL) \
		--output_dir $(RUNS)/sparse/$(SPARSE) $(ARGS)

# The paper's study on real models (hub access and a GPU): GPT-2, DistilGPT2, the six students, the five pruned
# models, DialoGPT small/medium/large, BlenderBot 400M-distill and 3B; then the report in $(REPORT_DIR).
reproduce: install
	$(PY) -m compress.study reproduce --runs $(RUNS) --data-dir $(DATA_DIR) --rtp-source $(RTP_SOURCE) \
		$(if $(TCCC_SOURCE),--tccc-train $(TCCC_SOURCE)) --accelerate-config $(ACCELERATE_CONFIG) \
		$(STUDY_NARROW) $(STUDY_ARGS)

# The report on every lm-eval output directory under $(RESULTS) (one per model).
report: install
	$(BIN)/compfair-report $(RESULTS)/* --out $(REPORT_DIR) $(ARGS)

# Every bench/*.py prints one JSON line; they are collected in $(BENCH_OUT).
BENCH_OUT ?= $(RUNS)/bench.jsonl
bench: install
	@mkdir -p $(dir $(BENCH_OUT)); : > $(BENCH_OUT).tmp
	@set -o pipefail; for script in bench/*.py; do \
		echo "bench: $$script" >&2; \
		$(PY) $$script | tail -n 1 | $(PY) -c 'import json, sys; line = sys.stdin.read().strip(); json.loads(line); print(line)' \
			2>/dev/null >> $(BENCH_OUT).tmp || { echo "bench: $$script failed or its last line is not JSON" >&2; exit 1; }; \
	done; mv $(BENCH_OUT).tmp $(BENCH_OUT); echo "wrote $(BENCH_OUT)"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# Layer dropping: remove 6 of GPT-2's 12 blocks chosen by DROP_METHOD (angular_distance or block_influence) on
# WikiText-103; writes $(RUNS)/dropped/gpt2_DROP_METHOD_6 (a stock 6-block GPT-2 and layer_dropping.json), the
# control for the 6-block students B and Bnot. A finished run is not redone. ARGS overrides fields, e.g.
# ARGS="--lora_healing true --max_steps 500" or ARGS="--model_name_or_path Qwen/Qwen2.5-0.5B --num_blocks_to_drop 12".
DROP_METHOD ?= angular_distance
.PHONY: drop-layers
drop-layers: install
	$(BIN)/accelerate launch --config_file $(ACCELERATE_CONFIG) compress/drop_layers.py \
		trainer_configs/drop_layers/gpt2_$(DROP_METHOD)_6.yaml --output_dir $(RUNS)/dropped/gpt2_$(DROP_METHOD)_6 $(ARGS)
