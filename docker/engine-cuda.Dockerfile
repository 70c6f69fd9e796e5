# An engine image for GPU nodes: Lightgate with vLLM (CUDA), ExLlamaV2, PyTorch with
# CUDA, and llama.cpp built with CUDA. One model per pod (helm/lightgate `engines`).
#   docker build -f docker/engine-cuda.Dockerfile -t lightgate/engine-cuda:0.1.0 .
# Not built in this project's CI: no CUDA base image is reachable there (the gateway
# image is built and probed by `make image-test`); scripts/gpu_check.sh lists its
# build for a GPU machine that has the base. hadolint checks it in `make test`.
# TensorRT-LLM has its own NGC images; run trtllm-serve there and reach it through
# the `openai` backend (an engine with `server: openai`).

ARG CUDA=12.8.1
FROM nvidia/cuda:${CUDA}-devel-ubuntu24.04 AS build
# Versions come with the base's Ubuntu release; pinning them would break on its next update.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-dev \
        build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY backends backends
COPY compressed_models compressed_models
COPY loadtest loadtest
COPY leanhttp leanhttp
# CUDA kernels for Ampere, Ada, Hopper and Blackwell; no -march=native (see gateway.Dockerfile).
ENV CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90;100"
RUN python3 -m venv /opt/lightgate \
    && /opt/lightgate/bin/pip install --no-cache-dir '.[llamacpp]' \
    # vLLM's CUDA wheel brings its matching torch; the `vllm` extra names the CPU build.
    && /opt/lightgate/bin/pip install --no-cache-dir 'vllm==0.33.0' 'exllamav2==0.3.2' 'psutil>=5.9'

FROM nvidia/cuda:${CUDA}-runtime-ubuntu24.04
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/lightgate /opt/lightgate
ENV PATH=/opt/lightgate/bin:$PATH \
    LIGHTGATE_CACHE=/models \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --create-home lightgate && mkdir /models && chown lightgate /models
USER 10001
EXPOSE 8000
ENTRYPOINT ["lightgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
