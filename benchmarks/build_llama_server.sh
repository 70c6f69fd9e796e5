#!/usr/bin/env bash
# Builds llama.cpp's own C++ server (the peer of benchmarks/batching.py) from the
# llama.cpp source vendored in the llama-cpp-python sdist on PyPI: the same llama.cpp
# that Lightgate's llamacpp backend runs, with the same flags (AMX off, see Makefile).
# Output: .cache/llama-server/bin/llama-server. Takes several minutes on 2 cores.
set -euo pipefail
version="${LLAMA_CPP_VERSION:-0.3.36}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/.cache/llama-server"
mkdir -p "$work"
if [ ! -x "$work/bin/llama-server" ]; then
  "$root/.venv/bin/python" -m pip download --quiet --no-deps --no-binary :all: \
    "llama-cpp-python==$version" -d "$work"
  tar -xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
  src="$work/llama_cpp_python-$version/vendor/llama.cpp"
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags"
  cmake --build "$work/build" --target llama-server -j "$(nproc)"
  mkdir -p "$work/bin"
  cp "$work/build/bin/"* "$work/bin/"
fi
echo "$work/bin/llama-server"
