#!/usr/bin/env bash
# Builds llama.cpp's shared libraries with ggml's tiled CPU flash attention taken from
# GGML_FA_TILE_MIN query rows (64 upstream; patches/ggml-fa-tile-min.patch), from the
# same llama.cpp source and flags as the llamacpp backend's build (AMX off, see
# Makefile). An experiment, not a build Lightgate serves from: docs/benchmarks.md
# ("ggml's tiled flash attention below 64 rows") times it with
#   GGML_FA_TILE_MIN=16 LLAMA_CPP_LIB_PATH="$(bash benchmarks/build_fa_tile_patch.sh)" \
#       .venv/bin/python -m benchmarks.kv_layout VARIANT
# Output: the directory of the patched libraries. Takes several minutes on 2 cores.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$root/.cache/fa-tile-patch"
if [ ! -e "$work/bin/libllama.so" ]; then
  if [ ! -d "$work/src" ]; then  # a copy of the backend's llama.cpp source, patched
    mkdir -p "$work"
    cp -a "$(bash "$root/scripts/llama_cpp_source.sh")" "$work/src"
    patch -d "$work/src" -p1 < "$root/benchmarks/patches/ggml-fa-tile-min.patch" >&2
  fi
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >&2
  cmake --build "$work/build" --target llama -j "$(nproc)" >&2
  mkdir -p "$work/bin"
  cp -a "$work/build/bin/"*.so* "$work/bin/"
fi
echo "$work/bin"
