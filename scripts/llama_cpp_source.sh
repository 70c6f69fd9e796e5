#!/usr/bin/env bash
# Unpacks the llama.cpp source vendored in the llama-cpp-python sdist (the same
# llama.cpp the llamacpp backend runs) into the model cache, once: the catalog converts
# Hugging Face folders to GGUF with its convert_hf_to_gguf.py. Prints the path.
set -euo pipefail
version="${LLAMA_CPP_VERSION:-0.3.36}"
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
src="${LIGHTGATE_CACHE:-$HOME/.cache/lightgate}/src"
if [ ! -f "$src/llama_cpp_python-$version/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  mkdir -p "$src"
  "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$src"
  tar -xzf "$src/llama_cpp_python-$version.tar.gz" -C "$src"
  rm "$src/llama_cpp_python-$version.tar.gz"
fi
echo "$src/llama_cpp_python-$version/vendor/llama.cpp"
