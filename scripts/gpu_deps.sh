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
$pip download --quiet --dest "$dest/wheels" --python-version 3.12 --only-binary=:all: \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    fastapi uvicorn httptools pydantic pydantic-settings httpx openai pyyaml rich prometheus-client \
    jinja2 pytest gguf nvidia-ml-py exllamav2==0.3.2 ninja 'scikit-build-core>=0.9' cmake
# torch, numpy, transformers, safetensors, tokenizers, huggingface-hub: the machine has them.
rm -f "$dest"/wheels/{torch,numpy,transformers,safetensors,tokenizers,huggingface_hub,nvidia_}*.whl
# llama.cpp's source for a CUDA build there: the sdist without tests, models, docs and other backends.
sdist=$(ls .cache/llama-cpp-python-*.tar.gz 2>/dev/null | head -1 || true)
if [ -z "$sdist" ]; then
    $pip download --quiet --no-deps --no-binary :all: 'llama-cpp-python==0.3.36' --dest .cache
    sdist=$(ls .cache/llama_cpp_python-*.tar.gz | head -1)
fi
work=$(mktemp -d)
tar -xzf "$sdist" -C "$work"
src=$(ls -d "$work"/llama_cpp_python-*)
rm -rf "$src"/vendor/llama.cpp/{models,docs,examples,tests,media,gguf-py,tools/server/public*,tools/mtmd,scripts,.devops} \
    "$src"/vendor/llama.cpp/ggml/src/ggml-{vulkan,sycl,metal,cann,opencl,musa,hip,kompute,webgpu,zdnn,blas,rpc} \
    "$src"/tests "$src"/docs "$src"/examples
tar -czf "$dest/llama-cpp-python-src.tar.gz" -C "$work" "$(basename "$src")"
rm -rf "$work"
# SmolLM2's GGUF (98 MB) is over one call's 64 MiB: two halves, carried by two calls
# (.cache/gpu-model/part-a with the first, part-b with the second; the device keeps
# ignored files between calls while it is warm), joined by gpu_check.sh.
model=.cache/gpu-model
rm -rf "$model" && mkdir -p "$model"
gguf=$(.venv/bin/python -c "from compressed_models.catalog import resolve; print(resolve('smollm2-135m-instruct-q4_1'))")
split -n 2 -a 1 "$gguf" "$model/part-"
du -sh "$dest" "$dest"/* "$model"/* | sort -h | tail -6
echo "carry .cache/gpu-wheels and .cache/gpu-model/part-a in a first call, .cache/gpu-model/part-b in the second"
