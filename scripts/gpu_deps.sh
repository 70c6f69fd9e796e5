#!/usr/bin/env bash
# Prepares what scripts/gpu_check.sh needs on a GPU machine that has Python 3.12,
# torch (CUDA), transformers and accelerate but no package index: the gateway's
# and the tests' Python dependencies as cp312 wheels unpacked into .cache/gpu-wheels,
# exllamav2, and llama.cpp's source (from the llama-cpp-python sdist, stripped of
# what a CUDA build does not read) to build there. The device tool carries at most
# 64 MiB, so the script prints the total.
#   bash scripts/gpu_deps.sh            (then: run with carry .cache/gpu-wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/gpu-wheels
rm -rf "$dest" && mkdir -p "$dest/wheels"
pip=".venv/bin/python -m pip"
# Only what that machine lacks, without dependencies: its image already has torch,
# transformers, numpy, pandas, pyyaml, jinja2, httpx, rich, prometheus-client,
# nvidia-ml-py, pytest, cmake, ninja and scikit-build-core (the device's KINDS.md),
# and resolving exllamav2's dependencies here pulls a triton wheel of 150 MB.
$pip download --quiet --no-deps --dest "$dest/wheels" --python-version 3.12 --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_31_x86_64 \
    fastapi starlette uvicorn httptools pydantic pydantic-core annotated-types typing-inspection \
    pydantic-settings python-dotenv openai jiter distro sniffio gguf exllamav2==0.3.2 websockets \
    'llguidance>=1.7.6,<2'
# llama.cpp's source for a CUDA build there: the sdist without tests, models, docs and other backends.
sdist=$(ls .cache/llama_cpp_python-*.tar.gz 2>/dev/null | head -1 || true)
if [ -z "$sdist" ]; then
    $pip download --quiet --no-deps --no-binary :all: 'llama-cpp-python==0.3.36' --dest .cache
    sdist=$(ls .cache/llama_cpp_python-*.tar.gz | head -1)
fi
work=$(mktemp -d)
tar -xzf "$sdist" -C "$work"
src=$(ls -d "$work"/llama_cpp_python-*)
rm -rf "$src"/.git "$src"/vendor/llama.cpp/{models,docs,examples,tests,media,gguf-py,tools/server/public*,tools/mtmd,tools/ui,scripts,.devops,.github,benches} \
    "$src"/vendor/llama.cpp/ggml/src/ggml-{vulkan,sycl,metal,cann,opencl,musa,hip,kompute,webgpu,zdnn,blas,rpc,hexagon,openvino,et,virtgpu} \
    "$src"/tests "$src"/docs "$src"/examples
tar -czf "$dest/llama-cpp-python-src.tar.gz" -C "$work" "$(basename "$src")"
rm -rf "$work"
# SmolLM2's GGUF (94 MiB) is over one call's 64 MiB: two parts (46 MiB, the first, travels
# beside the 15 MiB of wheels and the tree), carried by two calls
# (.cache/gpu-model/part-a with the first, part-b with the second; the device keeps
# ignored files between calls while it is warm), joined by gpu_check.sh.
model=.cache/gpu-model
rm -rf "$model" && mkdir -p "$model"
gguf=$(.venv/bin/python -c "from compressed_models.catalog import resolve; print(resolve('smollm2-135m-instruct-q4_1'))")
head -c 46M "$gguf" > "$model/part-a"
tail -c +$((46 * 1048576 + 1)) "$gguf" > "$model/part-b"
du -sh "$dest" "$dest"/* "$model"/* | sort -h | tail -6
echo "carry .cache/gpu-wheels and .cache/gpu-model/part-a in a first call, .cache/gpu-model/part-b in the second"
