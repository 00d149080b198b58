#!/usr/bin/env bash
# llama.cpp as a test oracle: builds llama.cpp's `llama-quantize`, `llama-simple` (greedy
# generation), `llama-embedding`, `llama-perplexity` and our `gguf_check` (gguf_check.cpp beside
# this file, linked against ggml) for tests/test_llama_cpp.py and tests/fixtures/.
#
#   tests/llama_cpp/build.sh           build unless cached; prints the bin folder on stdout
#   tests/llama_cpp/build.sh --print   print the bin folder if the build is there and current
#                                      (exit 0), else say why on stderr (exit 1); builds nothing
#
# llama.cpp's source is the copy vendored in the PyPI sdist of llama-cpp-python
# (vendor/llama.cpp), fetched once with pip download into .cache/, checked by sha256.
# Build: cmake + g++ (installed with apt-get when missing and root), Release, CPU only,
# only the targets needed, static, -j2; in .cache/llama.cpp-$LCP_VERSION/:
#   src/ (the vendored llama.cpp, with its models/ggml-vocab-*.gguf vocabularies and the
#   converter convert_hf_to_gguf.py + conversion/ + gguf-py/), build/ (cmake),
#   bin/{llama-quantize,llama-simple,llama-embedding,llama-perplexity,gguf_check},
#   build.log (the last build's output). A cold build takes about 5 minutes on 2 cores
#   (~45 s of it the 77 MB download); a cached one, a second.
# Nothing of llama.cpp is committed to this repo.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE=$ROOT/tests/llama_cpp

LCP_VERSION=0.3.36                 # llama-cpp-python; vendors llama.cpp at commit 0c1e57098
LLAMA_CPP_COMMIT=0c1e57098
LCP_SDIST=llama_cpp_python-$LCP_VERSION.tar.gz
LCP_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

CACHE=$ROOT/.cache
DIR=$CACHE/llama.cpp-$LCP_VERSION
BIN=$DIR/bin
LOG=$DIR/build.log
JOBS=${Q4APR_LLAMA_CPP_JOBS:-2}

CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=OFF -DGGML_CCACHE=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
  -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT=$LLAMA_CPP_COMMIT
)
# Only these targets are built (examples/ is configured for llama-simple and llama-embedding).
TARGETS=(llama-quantize llama-simple llama-embedding llama-perplexity ggml-base)
TOOLS=(llama-quantize llama-simple llama-embedding llama-perplexity)

say() { printf '[llama_cpp/build.sh] %s\n' "$*" >&2; }
die() { printf '[llama_cpp/build.sh] error: %s\n' "$*" >&2; exit 1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# What the cached build must match: this script, the checker's source.
stamp() { cat "$HERE/build.sh" "$HERE/gguf_check.cpp" | sha256sum | cut -d' ' -f1; }

current() {
  local t
  for t in "${TOOLS[@]}" gguf_check; do [ -x "$BIN/$t" ] || return 1; done
  [ "$(cat "$BIN/.stamp" 2>/dev/null || true)" = "$(stamp)" ]
}

if [ "${1:-}" = "--print" ]; then
  if current; then echo "$BIN"; exit 0; fi
  if [ -d "$BIN" ]; then
    say "the llama.cpp build in $BIN is out of date (run tests/llama_cpp/build.sh)"
  elif [ -s "$LOG" ]; then
    say "llama.cpp $LLAMA_CPP_COMMIT is not built: its last build failed (log: $LOG)"
  else
    say "llama.cpp $LLAMA_CPP_COMMIT is not built (run tests/llama_cpp/build.sh; ~5 min the first time)"
  fi
  exit 1
fi
[ $# -eq 0 ] || die "usage: tests/llama_cpp/build.sh [--print]"

mkdir -p "$CACHE"
# One build at a time (./build.sh test and a test run may both ask).
if command -v flock >/dev/null 2>&1; then
  exec 8>"$CACHE/llama.cpp.lock"
  flock 8
fi
if current; then echo "$BIN"; exit 0; fi
t0=$SECONDS

# ---------------------------------------------------------------- tools
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "${missing[*]} needed to build llama.cpp (apt-get install ${missing[*]}, as root)"
  say "${missing[*]} missing: installing Debian's ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- source
sdist=$CACHE/$LCP_SDIST
if [ ! -f "$sdist" ] || [ "$(sha256_of "$sdist")" != "$LCP_SHA256" ]; then
  rm -f "$sdist"
  pip=(python3 -m pip)
  if [ -x "$ROOT/.venv/bin/python" ] && "$ROOT/.venv/bin/python" -m pip --version >/dev/null 2>&1; then
    pip=("$ROOT/.venv/bin/python" -m pip)
  fi
  tmp=$CACHE/llama-cpp-python.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  say "fetching the sdist of llama-cpp-python==$LCP_VERSION from PyPI (it vendors llama.cpp)"
  if ! "${pip[@]}" download -q --disable-pip-version-check --no-deps --no-binary :all: \
      -d "$tmp" "llama-cpp-python==$LCP_VERSION" >"$tmp.log" 2>&1; then
    cat "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    die "could not fetch llama-cpp-python==$LCP_VERSION from PyPI (pip download failed)"
  fi
  [ -f "$tmp/$LCP_SDIST" ] || die "pip download did not produce $LCP_SDIST"
  got=$(sha256_of "$tmp/$LCP_SDIST")
  if [ "$got" != "$LCP_SHA256" ]; then
    rm -rf "$tmp" "$tmp.log"
    die "$LCP_SDIST has sha256 $got, expected $LCP_SHA256: refusing to build it"
  fi
  mv "$tmp/$LCP_SDIST" "$sdist"
  rm -rf "$tmp" "$tmp.log"
fi

src=$DIR/src
VOCAB_CHECK=models/ggml-vocab-llama-bpe.gguf
if [ -f "$src/.ok" ] && [ ! -f "$src/$VOCAB_CHECK" ]; then
  # a tree unpacked by an older version of this script, without the vocabularies: add them
  # (keeping build/, whose objects stay current)
  say "adding llama.cpp's models/ggml-vocab-* to $src"
  rm -rf "$src/models.tmp"; mkdir -p "$src/models.tmp"
  tar -xzf "$sdist" -C "$src/models.tmp" --strip-components=4 \
    "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp/models" \
    || die "$LCP_SDIST has no vendor/llama.cpp/models"
  [ -f "$src/models.tmp/${VOCAB_CHECK#models/}" ] || die "$LCP_SDIST lacks $VOCAB_CHECK"
  rm -rf "$src/models" && mv "$src/models.tmp" "$src/models"
fi
if [ ! -f "$src/.ok" ]; then
  rm -rf "$src" "$DIR/build"
  mkdir -p "$src"
  # vendor/llama.cpp only (with models/ggml-vocab-*: the tokenizer tests use them), less its
  # docs, media and .git (a submodule link to a folder the sdist lacks)
  tar -xzf "$sdist" -C "$src" --strip-components=3 \
    --exclude='*/docs' --exclude='*/media' \
    --exclude='llama_cpp_python-*/vendor/llama.cpp/.git' \
    "llama_cpp_python-$LCP_VERSION/vendor/llama.cpp" \
    || die "$LCP_SDIST has no vendor/llama.cpp"
  for f in ggml/src/gguf.cpp ggml/include/gguf.h tools/quantize/quantize.cpp \
      examples/simple/simple.cpp examples/embedding/embedding.cpp tools/perplexity/main.cpp \
      convert_hf_to_gguf.py gguf-py/gguf/__init__.py "$VOCAB_CHECK"; do
    [ -f "$src/$f" ] || die "the vendored llama.cpp lacks $f"
  done
  touch "$src/.ok"
fi

# ---------------------------------------------------------------- build
mkdir -p "$DIR/build" "$BIN"
: >"$LOG"
say "building llama.cpp $LLAMA_CPP_COMMIT (${TARGETS[*]}, -j$JOBS) in $DIR; log: $LOG"
# Git must not take this repo for llama.cpp's (its build info would name our commit).
export GIT_CEILING_DIRECTORIES=$CACHE
{
  cmake -S "$src" -B "$DIR/build" "${CMAKE_FLAGS[@]}" \
    && cmake --build "$DIR/build" --config Release -j "$JOBS" --target "${TARGETS[@]}"
} >>"$LOG" 2>&1 || { tail -n 40 "$LOG" >&2; die "the llama.cpp build failed (full log: $LOG)"; }

base=$(find "$DIR/build" -type f -name libggml-base.a | head -n 1)
[ -n "$base" ] || die "the build made no libggml-base.a (log: $LOG)"
declare -A built
for t in "${TOOLS[@]}"; do
  built[$t]=$(find "$DIR/build" -type f -name "$t" -perm -u+x | head -n 1)
  [ -n "${built[$t]}" ] || die "the build made no $t (log: $LOG)"
done
say "compiling gguf_check.cpp against ggml"
g++ -std=c++17 -O2 -Wall -I"$src/ggml/include" "$HERE/gguf_check.cpp" "$base" -fopenmp -lpthread -lm \
    -o "$BIN/gguf_check.tmp" >>"$LOG" 2>&1 \
  || { tail -n 40 "$LOG" >&2; die "gguf_check.cpp did not compile (log: $LOG)"; }
mv "$BIN/gguf_check.tmp" "$BIN/gguf_check"
# each tool replaced by a rename, so a test running meanwhile sees the old or the new binary
for t in "${TOOLS[@]}"; do
  cp "${built[$t]}" "$BIN/$t.tmp" && mv "$BIN/$t.tmp" "$BIN/$t"
done
stamp >"$BIN/.stamp"
say "llama.cpp oracle ready in $BIN ($((SECONDS - t0))s)"
echo "$BIN"
