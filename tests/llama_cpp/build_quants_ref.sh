#!/usr/bin/env bash
# The C reference quantizers as a test oracle: compiles quants_ref.c (beside this file)
# against the libggml-base.a of the llama.cpp build that tests/llama_cpp/build.sh makes.
# Kept out of build.sh's stamp on purpose: changing this oracle must not force the
# 5-minute llama.cpp rebuild. Cached in .cache/quants_ref-<hash of this script, the
# source and libggml-base.a>/quants_ref.
#
#   tests/llama_cpp/build_quants_ref.sh           build unless cached; prints the binary's path
#   tests/llama_cpp/build_quants_ref.sh --print   print it if built and current (exit 0), else
#                                                 say why on stderr (exit 1); builds nothing
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/llama_cpp
say() { printf '[llama_cpp/build_quants_ref.sh] %s\n' "$*" >&2; }

# The llama.cpp build that build.sh makes (only looked for here, never built: its stamp
# moves with build.sh, while ggml's quantizers only change with the pinned version).
LCP_VERSION=$(sed -n 's/^LCP_VERSION=\([0-9.]*\).*/\1/p' "$HERE/build.sh")
DIR=$ROOT/.cache/llama.cpp-$LCP_VERSION
base=$DIR/build/ggml/src/libggml-base.a
if [ ! -f "$base" ] || [ ! -f "$DIR/src/ggml/include/ggml.h" ]; then
  say "llama.cpp $LCP_VERSION is not built (run tests/llama_cpp/build.sh; ~5 min the first time)"
  exit 1
fi
key=$(cat "$HERE/build_quants_ref.sh" "$HERE/quants_ref.c" "$base" | sha256sum | cut -c1-16)
OUT=$ROOT/.cache/quants_ref-$key/quants_ref

if [ -x "$OUT" ]; then echo "$OUT"; exit 0; fi
if [ "${1:-}" = "--print" ]; then
  say "the quantizer oracle is not built (run tests/llama_cpp/build_quants_ref.sh; a few seconds)"
  exit 1
fi
mkdir -p "$(dirname "$OUT")"
gcc -std=gnu11 -O2 -Wall -I"$DIR/src/ggml/include" "$HERE/quants_ref.c" "$base" \
    -fopenmp -lstdc++ -lpthread -lm -o "$OUT.tmp" >&2
mv "$OUT.tmp" "$OUT"
echo "$OUT"
