"""The built site's Python runtime: Pyodide + numpy + the q4apr core from dist/.

Most tests run Python under Pyodide in Node (tests/node/run_core.mjs, loaded the way
the worker loads it) and compare with the same script run natively: the core must
give the same bytes in the browser as on the command line. One test loads the same
files in Chromium from a module worker.
"""
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO, run_in_pyodide
from helpers import need

NUMPY_WHEEL = "numpy-2.0.2-cp312-cp312-pyodide_2024_0_wasm32.whl"
PYODIDE_FILES = ["pyodide.mjs", "pyodide.asm.js", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json"]
CORE_API = ("open_model", "Options", "quantize", "MemorySink", "CallbackSink", "inspect_model", "Q4Error")


def run_native(script_text, *files, args=(), tmp_path):
    """The same script natively (python with <repo>/py on the path); returns stdout."""
    script = tmp_path / "native_script.py"
    script.write_text(script_text)
    env = dict(os.environ, PYTHONPATH=str(REPO / "py"))
    r = subprocess.run([sys.executable, str(script), *map(str, files), *map(str, args)],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=600)
    if r.returncode != 0:
        pytest.fail("native run failed:\n" + r.stderr.decode(errors="replace")[-6000:], pytrace=False)
    return r.stdout.decode()


def core_ready():
    """The core's public API (help(q4apr)) is all there."""
    r = subprocess.run([sys.executable, "-c", "import q4apr, sys; sys.exit(0 if all(hasattr(q4apr, n) for n in %r) else 3)" % (CORE_API,)],
                       env=dict(os.environ, PYTHONPATH=str(REPO / "py")), capture_output=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------ the dist layout

PYODIDE_CACHE = REPO / ".cache" / "pyodide-0.27.7"
PYC_HEADER = b"\xcb\r\r\n" + (1).to_bytes(4, "little")   # CPython 3.12 magic; hash-based, unchecked


def verified_numpy_wheel():
    """The official wheel build.sh verified (.cache/), and its entry in the official lock."""
    entry = json.loads((PYODIDE_CACHE / "pyodide-lock.json").read_text())["packages"]["numpy"]
    whl = REPO / ".cache" / entry["file_name"]
    if not whl.is_file():
        need("the verified numpy wheel is not in .cache/ (build.sh fetches it)")
    assert hashlib.sha256(whl.read_bytes()).hexdigest() == entry["sha256"]
    return whl, entry


def test_dist_has_pyodide_runtime_and_verified_numpy(dist_dir):
    pdir = dist_dir / "static" / "pyodide"
    for f in PYODIDE_FILES:
        assert (pdir / f).is_file(), f
    lock = json.loads((pdir / "pyodide-lock.json").read_text())
    assert lock["info"]["version"] == "0.27.7"
    entry = lock["packages"]["numpy"]
    assert entry["file_name"] == NUMPY_WHEEL and entry["version"] == "2.0.2"
    assert hashlib.sha256((pdir / NUMPY_WHEEL).read_bytes()).hexdigest() == entry["sha256"]
    # dist's lock is the official one but for numpy's sha256 (its wheel is precompiled)
    official = json.loads((PYODIDE_CACHE / "pyodide-lock.json").read_text())
    assert {**official["packages"]["numpy"], "sha256": entry["sha256"]} == entry
    official["packages"]["numpy"] = entry
    assert official == lock


def test_dist_numpy_wheel_is_the_verified_one_precompiled(dist_dir):
    whl, _ = verified_numpy_wheel()
    with zipfile.ZipFile(whl) as src, zipfile.ZipFile(dist_dir / "static" / "pyodide" / NUMPY_WHEEL) as out:
        src_names, out_names = src.namelist(), out.namelist()
        py = [n for n in src_names if n.endswith(".py") and ".dist-info/" not in n]
        assert len(py) > 100
        assert out_names == [n + "c" if n in py else n for n in src_names]
        for n in src_names:
            if n in py:
                pyc = out.read(n + "c")
                assert pyc[:8] == PYC_HEADER, n
            elif not n.endswith(".dist-info/RECORD"):
                assert out.read(n) == src.read(n), n
        record = out.read(next(n for n in out_names if n.endswith(".dist-info/RECORD"))).decode()
        assert sorted(line.split(",")[0] for line in record.splitlines()) == sorted(out_names)


def test_dist_stdlib_zip_is_pyodides_precompiled(dist_dir):
    """Pyodide's python_stdlib.zip with each module's .py replaced by its .pyc (zipimport
    compiled them from source at every start), the rest as it was; runtime.js keys the
    runtime snapshot by this zip (the snapshot holds zipimport's table of its members)."""
    out_zip = dist_dir / "static" / "pyodide" / "python_stdlib.zip"
    with zipfile.ZipFile(PYODIDE_CACHE / "python_stdlib.zip") as src, zipfile.ZipFile(out_zip) as out:
        src_names = src.namelist()
        py = [n for n in src_names if n.endswith(".py")]
        assert len(py) > 400
        assert out.namelist() == [n + "c" if n in py else n for n in src_names]
        for n in src_names:
            if n in py:
                assert out.read(n + "c")[:8] == PYC_HEADER, n
            else:
                assert out.read(n) == src.read(n), n
    runtime = (dist_dir / "static" / "runtime.js").read_text()
    assert "__STDLIB_ID__" not in runtime
    assert f"-stdlib-{hashlib.sha256(out_zip.read_bytes()).hexdigest()[:16]}`" in runtime


def test_stdlib_modules_load_from_their_pycs():
    out = run_in_pyodide("import tarfile, dataclasses, json, traceback\n"
                         "print(tarfile.__file__, dataclasses.__spec__.origin)\n"
                         "try:\n    json.loads('{')\n"
                         "except ValueError:\n    print(traceback.format_exc().splitlines()[-1])\n")
    files, error = out.splitlines()
    assert files.split() == ["/lib/python312.zip/tarfile.pyc", "/lib/python312.zip/dataclasses.pyc"]
    assert error.startswith("json.decoder.JSONDecodeError: Expecting property name")


def test_core_zip_is_the_package_sources(dist_dir):
    src = sorted("q4apr/" + p.relative_to(REPO / "py" / "q4apr").as_posix()
                 for p in (REPO / "py" / "q4apr").rglob("*.py") if "__pycache__" not in p.parts)
    pycs = {n.rpartition("/")[0] + "/__pycache__/" + n.rpartition("/")[2][:-3] + ".cpython-312.pyc": n for n in src}
    with zipfile.ZipFile(dist_dir / "static" / "q4apr.zip") as z:
        names = z.namelist()
        assert names == sorted(src + list(pycs))
        for n in names:
            assert z.getinfo(n).date_time == (1980, 1, 1, 0, 0, 0)
            if n in pycs:
                assert z.read(n)[:8] == PYC_HEADER, n
            else:
                assert z.read(n) == (REPO / "py" / n).read_bytes()


# The .pyc in dist are exactly what Pyodide's CPython compiles from the sources: the core's
# from py/q4apr, numpy's from the verified wheel, the standard library's from Pyodide's zip
# (unchecked-hash pycs name their source's hash).
PYC_CHECK = r"""
import importlib._bootstrap_external as be, importlib.util, sys, zipfile
def pyc(source, filename):
    code = compile(source, filename, "exec", dont_inherit=True, optimize=-1)
    return bytes(be._code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False))
src_whl, out_whl, core_zip, pkg, src_stdlib, out_stdlib = sys.argv[1:]
n = 0
for src, out, root in ((src_whl, out_whl, "/lib/python3.12/site-packages/"),
                       (src_stdlib, out_stdlib, "/lib/python312.zip/")):
    with zipfile.ZipFile(src) as s, zipfile.ZipFile(out) as o:
        for name in s.namelist():
            if name.endswith(".py") and ".dist-info/" not in name:
                assert o.read(name + "c") == pyc(s.read(name), root + name), name
                n += 1
with zipfile.ZipFile(core_zip) as z:
    for name in z.namelist():
        if name.endswith(".pyc"):
            folder, _, base = name.rpartition("/__pycache__/")
            py = folder + "/" + base.split(".")[0] + ".py"
            with open(pkg + "/" + py[len("q4apr/"):], "rb") as f:
                source = f.read()
            assert z.read(name) == pyc(source, "/lib/q4apr/" + py), name
            n += 1
print(n)
"""


def test_pycs_are_compiled_from_the_sources_by_pyodide(dist_dir):
    whl, _ = verified_numpy_wheel()
    pkg = REPO / "py" / "q4apr"
    out = run_in_pyodide(PYC_CHECK, whl, dist_dir / "static" / "pyodide" / NUMPY_WHEEL,
                         dist_dir / "static" / "q4apr.zip",
                         args=(pkg, PYODIDE_CACHE / "python_stdlib.zip",
                               dist_dir / "static" / "pyodide" / "python_stdlib.zip"),
                         mounts=(pkg, PYODIDE_CACHE))
    assert int(out) > 600


def test_sample_model_is_deterministic_safetensors(dist_dir, tmp_path):
    built = dist_dir / "static" / "sample" / "model.safetensors"
    again = tmp_path / "again.safetensors"
    subprocess.run([sys.executable, str(REPO / "static" / "sample" / "make_sample.py"), str(again)], check=True)
    assert again.read_bytes() == built.read_bytes()
    assert 500_000 <= built.stat().st_size <= 2_000_000
    safetensors = pytest.importorskip("safetensors.numpy")
    t = safetensors.load_file(str(built))
    h = 128
    assert t["model.embed_tokens.weight"].shape == (512, h)
    assert t["lm_head.weight"].shape == (512, h)
    assert t["model.layers.1.mlp.down_proj.weight"].shape == (h, 352)
    assert t["model.layers.0.input_layernorm.weight"].ndim == 1
    assert {str(a.dtype) for a in t.values()} == {"float32", "float16"}
    from safetensors import safe_open
    with safe_open(str(built), "np") as f:
        assert f.metadata()["name"] == "q4apr-sample-llama"


def test_service_worker_placeholders_filled(dist_dir):
    sw = (dist_dir / "sw.js").read_text()
    assert "__BUILD_VERSION__" not in sw and "__PRECACHE__" not in sw
    files = sorted(p.relative_to(dist_dir).as_posix() for p in dist_dir.rglob("*") if p.is_file())
    files.remove("sw.js")
    assert json.dumps(["./"] + files) in sw
    assert not (dist_dir / "static" / "sw.js").exists()


# ------------------------------------------------------------------ Pyodide in Node

def test_numpy_under_pyodide_is_2_0_2():
    out = run_in_pyodide("import sys, numpy\nprint(numpy.__version__, sys.platform)\n")
    assert out.split() == ["2.0.2", "emscripten"]


NUMPY_FROM_WHEEL = r"""
import os, sys, zipfile
import pyodide_js
site = next(p for p in sys.path if p.endswith("/site-packages"))
def libs():
    return sorted(k.rsplit("/", 1)[1].split(".")[0] for k in pyodide_js._module.LDSO.loadedLibsByName.object_keys()
                  if "/numpy/" in k)
print(" ".join(libs()))
with zipfile.ZipFile(sys.argv[1]) as z:
    members = {n for n in z.namelist() if not n.endswith("/")}
    for n in members:
        with open(f"{site}/{n}", "rb") as f:
            assert f.read() == z.read(n), n
tops = {n.split("/")[0] for n in members}
written = {os.path.relpath(os.path.join(d, f), site) for t in tops for d, _, fs in os.walk(f"{site}/{t}") for f in fs}
print(len(members), written == members)
import numpy.random, numpy.fft
print(numpy.random.default_rng(7).integers(0, 100, 4).tolist(), numpy.fft.rfft([1.0, 2.0, 3.0, 4.0]).real.tolist())
print(" ".join(libs()))
"""


def test_numpy_is_its_wheel_unpacked_and_loads_its_libraries_when_imported(dist_dir):
    """The workers install numpy by unpacking its wheel (static/wheel.js; run_core.mjs
    does the same): every member is written as it is in the wheel and nothing else, and
    of numpy's 19 shared libraries only the 3 `import numpy` needs are loaded until a
    module that needs another is imported (Pyodide's loadPackage compiled all 19)."""
    out = run_in_pyodide(NUMPY_FROM_WHEEL, dist_dir / "static" / "pyodide" / NUMPY_WHEEL).splitlines()
    assert out[0].split() == ["_multiarray_tests", "_multiarray_umath", "_umath_linalg"]
    assert out[1] == "338 True"
    assert out[2] == "[94, 62, 68, 89] [10.0, -2.0, -2.0]"   # as natively (numpy 2.4.6 too)
    assert {"_generator", "mtrand", "_pocketfft_umath"} <= set(out[3].split())


INSTALL_WHEEL = r"""
import { loadPyodide } from "%(pyodide)s";
import { installWheel, readFiles, writeFiles } from "%(wheel)s";
import fs from "node:fs";
const py = await loadPyodide({ indexURL: "%(index)s" });
const results = {};
for (const name of process.argv.slice(2)) {
  try {
    results[name] = { files: installWheel(py, new Uint8Array(fs.readFileSync(name)), name.split("/").pop()) };
    if (name.endsWith("good.whl")) {   // handed to another worker: read back, written again
      const files = readFiles(py, results[name].files);
      py.runPython("import shutil; shutil.rmtree('/lib/python3.12/site-packages/pkg')");
      writeFiles(py, files);
      results.again = py.runPython("open('/lib/python3.12/site-packages/pkg/__init__.py').read() + open('/lib/python3.12/site-packages/pkg/data.bin', 'rb').read().hex()");
    }
  } catch (e) {
    results[name] = { error: String(e.message).trim().split("\n").pop() };
  }
}
results.site = py.runPython("import os; sorted(os.listdir('/lib/python3.12/site-packages'))").toJs();
results.escaped = py.runPython("import os; os.path.exists('/lib/python3.12/evil.py')");
console.log(JSON.stringify(results));
"""


def test_install_wheel_refuses_a_damaged_wheel_and_one_that_escapes_its_folder(dist_dir, tmp_path):
    """static/wheel.js checks each member's size and CRC (fetch checks the whole wheel's
    sha256 first, in the browser) and never writes outside site-packages."""
    pdir = dist_dir / "static" / "pyodide"
    good = tmp_path / "good.whl"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("pkg/__init__.py", "x = 1\n" * 50)
        z.writestr("pkg/data.bin", bytes(range(256)))
        z.writestr("pkg-1.0.dist-info/RECORD", "")
    damaged = tmp_path / "damaged.whl"
    data = bytearray(good.read_bytes())
    data[data.index(b"pkg/__init__.py") + len("pkg/__init__.py") + 3] ^= 0xFF   # a byte of its deflate stream
    damaged.write_bytes(bytes(data))
    escaping = tmp_path / "escaping.whl"
    with zipfile.ZipFile(escaping, "w") as z:
        z.writestr("../evil.py", "boom\n")
    not_zip = tmp_path / "not.whl"
    not_zip.write_bytes(b"not a zip at all" * 10)
    script = tmp_path / "install.mjs"
    script.write_text(INSTALL_WHEEL % {"pyodide": (pdir / "pyodide.mjs").as_uri(), "index": f"{pdir}/",
                                       "wheel": (dist_dir / "static" / "wheel.js").as_uri()})
    r = subprocess.run(["node", str(script), str(good), str(damaged), str(escaping), str(not_zip)],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    res = json.loads(r.stdout.decode().strip().splitlines()[-1])
    assert res[str(good)] == {"files": ["pkg/__init__.py", "pkg/data.bin", "pkg-1.0.dist-info/RECORD"]}
    assert res["again"] == "x = 1\n" * 50 + bytes(range(256)).hex()
    assert "damaged.whl" in res[str(damaged)]["error"] and "pkg/__init__.py" in res[str(damaged)]["error"]
    assert res[str(escaping)]["error"] == "ValueError: escaping.whl: member '../evil.py' is outside the wheel's folder"
    assert "BadZipFile" in res[str(not_zip)]["error"]
    assert res["site"] == ["pkg", "pkg-1.0.dist-info"] and res["escaped"] is False


def test_harness_reports_python_exceptions():
    r = run_in_pyodide("import sys\nprint('before')\nraise ValueError('boom-42')\n", check=False)
    assert r.returncode == 1
    assert b"before" in r.stdout
    assert b"ValueError: boom-42" in r.stderr and b"Traceback" in r.stderr


def test_import_core_under_pyodide(tmp_path):
    script = ("import q4apr, sys\n"
              "print(q4apr.__file__)\n"
              "print(sorted(n for n in %r if hasattr(q4apr, n)))\n" % (CORE_API,))
    out = run_in_pyodide(script).splitlines()
    assert out[0] == "/lib/q4apr/q4apr/__init__.py"   # .py kept; its __pycache__ .pyc is what runs
    assert out[1] == run_native(script, tmp_path=tmp_path).splitlines()[1]


# The same script, natively and under Pyodide: sha256 and length of each output.
QUANTIZE_FILES = r'''
import hashlib, json, sys
import q4apr

def digest(b):
    return "%s:%d" % (hashlib.sha256(b).hexdigest(), len(b))

out = {}
fmts = sys.argv[sys.argv.index("--formats") + 1].split(",")
for path in sys.argv[1:sys.argv.index("--formats")]:
    for fmt in fmts:
        key = path.rsplit("/", 1)[-1] + " -> " + fmt
        try:
            with q4apr.open_model(path) as m:
                sink = q4apr.MemorySink()
                q4apr.quantize(m, sink, q4apr.Options(format=fmt))
                out[key] = digest(sink.getvalue())
        except q4apr.Q4Error as e:
            out[key] = "Q4Error: " + str(getattr(e, "message", e))
print(json.dumps(out, sort_keys=True))
'''


def test_shared_vectors_same_bytes_under_pyodide(shared_dir, tmp_path):
    core_ready()
    vectors = sorted((shared_dir / "vectors" / "apr").glob("*.npy"))
    assert vectors, "no .npy vectors in shared/vectors/apr"
    args = ("--formats", "apr,gguf")
    native = json.loads(run_native(QUANTIZE_FILES, *vectors, args=args, tmp_path=tmp_path))
    browser = json.loads(run_in_pyodide(QUANTIZE_FILES, *vectors, args=args))
    assert len(native) == 2 * len(vectors)
    assert browser == native


# NaN/Inf in every float type, refused and allowed: the scan has a per-platform branch (F16
# on its bits natively, np.isfinite under Pyodide), so both must give the same answers.
NON_FINITE = r'''
import hashlib, json, os, tempfile
import numpy as np
import q4apr

folder = tempfile.mkdtemp()
out = {}
for dt in ("f2", "f4", "f8"):
    for shape, bad in (((4, 64), 130), ((300,), 299), ((2, 64), 0)):
        for value in (np.nan, np.inf, -np.inf):
            a = np.ones(shape, dt)
            a.reshape(-1)[bad] = value
            a.reshape(-1)[-1] = value
            path = os.path.join(folder, "x.npz")
            np.savez(path, **{"t.weight": a, "n": a.reshape(-1)[:40].copy()})
            for allow in (False, True):
                for fmt, skip in (("apr", ()), ("gguf", ()), ("apr", ("*",))):
                    key = f"{dt} {shape} {bad} {value} {allow} {fmt} {skip}"
                    try:
                        with q4apr.open_model(path) as m:
                            sink = q4apr.MemorySink()
                            r = q4apr.quantize(m, sink, q4apr.Options(
                                format=fmt, skip=skip, allow_non_finite=allow, chunk_bytes=256))
                        out[key] = [hashlib.sha256(sink.getvalue()).hexdigest(),
                                    [t.non_finite for t in r.tensors]]
                    except q4apr.Q4Error as e:
                        out[key] = e.message.replace(path, "X")
print(json.dumps(out, sort_keys=True))
'''


def test_non_finite_scan_same_under_pyodide(tmp_path):
    core_ready()
    native = json.loads(run_native(NON_FINITE, tmp_path=tmp_path))
    browser = json.loads(run_in_pyodide(NON_FINITE))
    assert browser == native
    assert any("non-finite weight" in v for v in native.values() if isinstance(v, str))
    assert any(isinstance(v, list) and v[1][0] for v in native.values())


ROUND_TRIP = r'''
import hashlib, json, sys
import q4apr

src, outdir = sys.argv[1], sys.argv[2]
result = {}
with q4apr.open_model(src) as m:
    result["input"] = q4apr.inspect_model(m)["tensors"]
for fmt in ("apr", "gguf"):
    with q4apr.open_model(src) as m:
        mem = q4apr.MemorySink()
        report = q4apr.quantize(m, mem, q4apr.Options(format=fmt)).to_dict()
    data = mem.getvalue()
    # the worker's way: CallbackSink chunks, then the head goes first
    chunks = []
    with q4apr.open_model(src) as m:
        cb = q4apr.CallbackSink(chunks.append)
        gen = q4apr.quantize_steps(m, cb, q4apr.Options(format=fmt))
        steps = 0
        while True:
            try:
                next(gen)
                steps += 1
            except StopIteration as stop:
                report2 = stop.value.to_dict()
                break
    assert bytes(cb.head) + b"".join(bytes(c) for c in chunks) == data, fmt + ": CallbackSink != MemorySink"
    assert steps > 0
    name = q4apr.output_name("model", fmt)
    out = outdir + "/" + name
    with open(out, "wb") as f:
        f.write(data)
    with q4apr.open_model(out) as back:
        tensors = q4apr.inspect_model(back)["tensors"]
    for r in (report, report2):
        r["totals"].pop("seconds", None)
    assert report == report2
    result[fmt] = {"name": name, "digest": "%s:%d" % (hashlib.sha256(data).hexdigest(), len(data)),
                   "report": report, "tensors": tensors}
print(json.dumps(result, sort_keys=True, default=str))
'''


def test_sample_model_round_trip_same_bytes_under_pyodide(dist_dir, tmp_path):
    core_ready()
    sample = dist_dir / "static" / "sample" / "model.safetensors"
    nat_dir, py_dir = tmp_path / "native", tmp_path / "pyodide"
    nat_dir.mkdir()
    py_dir.mkdir()
    native = json.loads(run_native(ROUND_TRIP, sample, args=(nat_dir,), tmp_path=tmp_path))
    browser = json.loads(run_in_pyodide(ROUND_TRIP, sample, args=(py_dir,), mounts=(py_dir,)))
    for fmt in ("apr", "gguf"):
        assert browser[fmt]["digest"] == native[fmt]["digest"], fmt
        assert (py_dir / native[fmt]["name"]).read_bytes() == (nat_dir / native[fmt]["name"]).read_bytes()
        assert browser[fmt]["tensors"] == native[fmt]["tensors"]
        # the report's statistics are float sums: numpy's summation order differs between
        # wasm32 and native SIMD builds, so mse may differ in the last digits (not the bytes)
        b_rows, n_rows = browser[fmt]["report"]["tensors"], native[fmt]["report"]["tensors"]
        assert len(b_rows) == len(n_rows)
        for b, n in zip(b_rows, n_rows):
            assert {**b, "mse": None, "snr_db": None} == {**n, "mse": None, "snr_db": None}
            if n["mse"] is None:
                assert b["mse"] is None, b["name"]
            else:
                assert b["mse"] == pytest.approx(n["mse"], rel=1e-4, abs=1e-12), b["name"]
        assert len(native[fmt]["tensors"]) == len(native["input"])
    assert browser["input"] == native["input"]


# ------------------------------------------------------------------ the same files in Chromium

PROBE_WORKER = r'''
// Pyodide's own loading sequence (loadPackage for numpy: the workers' fallback when they
// cannot unpack its wheel themselves), against the built files in a module worker.
import { loadPyodide } from "./static/pyodide/pyodide.mjs";
const t0 = performance.now();
try {
  const pyodide = await loadPyodide({ indexURL: new URL("./static/pyodide/", import.meta.url).href });
  const errors = [];
  await pyodide.loadPackage("numpy", { messageCallback: () => {}, errorCallback: (m) => errors.push(m) });
  pyodide.runPython("import numpy");  // loadPackage resolves even on failure
  const res = await fetch(new URL("./static/q4apr.zip", import.meta.url));
  pyodide.unpackArchive(await res.arrayBuffer(), "zip", { extractDir: "/lib/q4apr" });
  pyodide.runPython("import sys; sys.path.insert(0, '/lib/q4apr')");
  const out = pyodide.runPython(`
import json, numpy, importlib.util
spec = importlib.util.find_spec("q4apr")
json.dumps({"numpy": numpy.__version__, "core": bool(spec and spec.submodule_search_locations and
            list(spec.submodule_search_locations)[0] == "/lib/q4apr/q4apr")})`);
  postMessage({ ok: true, ...JSON.parse(out), errors, ms: performance.now() - t0 });
} catch (e) {
  postMessage({ ok: false, error: String(e && e.stack || e) });
}
'''

PROBE_PAGE = '''<!doctype html><meta charset="utf-8"><title>probe</title>
<script type="module">
const w = new Worker("./probe-worker.mjs", { type: "module" });
window.probe = new Promise((resolve) => { w.onmessage = (e) => resolve(e.data);
  w.onerror = (e) => resolve({ ok: false, error: "worker error: " + e.message }); });
</script>'''


KQUANTS = r'''
import hashlib, json, sys
import numpy as np
import q4apr
from q4apr import codecs

x = np.load(sys.argv[1])
out = {"kernels": [c.kernel is not None for c in (codecs.Q4_K, codecs.Q6_K, codecs.Q4_0, codecs.AprQ4)]
                  + [codecs._f16_kernel is not None]}
f16_calls = []                                     # the F16 kernel, counted if set
if codecs._f16_kernel is not None:
    f16_kernel = codecs._f16_kernel
    codecs.set_f16_kernel(lambda h, o: (f16_calls.append(h.size), f16_kernel(h, o))[1])
h = np.arange(65536, dtype=np.uint16)             # every half, decoded as F16 input is
out["F16"] = hashlib.sha256(codecs.f16_to_f32(h, np.empty(h.size, np.float32)).tobytes()).hexdigest()
for name in ("Q4_K", "Q6_K"):
    out[name] = hashlib.sha256(codecs.quantize(name, x).tobytes()).hexdigest()
x32 = np.concatenate([np.zeros(64, np.float32), np.full(32, np.nan, np.float32), x])
for name in ("Q4_0", "APR_Q4"):              # with the round trip, some blocks left to numpy
    xs = x32[: x32.size // 32 * 32] if name == "Q4_0" else x32
    y = np.empty_like(xs)
    b = codecs.quantize(name, xs, dequantized=y)
    out[name] = hashlib.sha256(b.tobytes() + y.tobytes()).hexdigest()
for key, fmt, qtype in (("gguf", "gguf", "Q4_K_M"), ("apr", "apr", "Q4_0"),
                        ("apr-k", "apr", "Q4_K_M")):   # small chunks; APR's padded K rows
    with q4apr.open_model(sys.argv[2]) as m:
        mem = q4apr.MemorySink()
        report = q4apr.quantize(m, mem, q4apr.Options(format=fmt, type=qtype, chunk_bytes=16384))
    out[key] = hashlib.sha256(mem.getvalue()).hexdigest()
    fmt = key
    # the block tensors' statistics
    out[fmt + " report"] = [t for t in report.to_dict()["tensors"]
                            if t["dtype_out"] in ("APR_Q4", "Q4_0", "Q4_K", "Q6_K")]
out["F16 kernel"] = len(f16_calls) >= 2          # the halves above, the F16 tensor's chunks
print(json.dumps(out))
'''


def test_k_quants_same_bytes_under_pyodide_with_numpy_wasm_and_js_kernels(tmp_path):
    """Under Pyodide, numpy's kernels and the page's (kquants.wasm: Q4_K, Q6_K, Q4_0, APR Q4,
    F16 input; its fallback kquants.js: the K-quants) give the native bytes and decoded
    values, on random and adversarial blocks (zeros and NaN among them: blocks the wasm
    kernel leaves to numpy) and through the pipeline (a Q4_K_M GGUF, an APR, with the
    report's statistics; an F16 tensor among F32 ones)."""
    core_ready()
    import numpy as np
    from safetensors.numpy import save_file
    from test_kquants import adversarial
    rng = np.random.default_rng(8)
    parts = [rng.standard_normal(256 * 64).astype(np.float32) * s for s in (1e-3, 0.02, 1.0, 300.0)]
    parts += [b.reshape(-1) for b in adversarial(256).values()]
    x = np.concatenate(parts + [rng.standard_normal(100).astype(np.float32)])   # a padded tail
    np.save(tmp_path / "x.npy", x)
    t = {"model.embed_tokens.weight": rng.standard_normal((256, 256)).astype(np.float32),
         "model.layers.0.self_attn.v_proj.weight": rng.standard_normal((256, 256)).astype(np.float32),
         "model.layers.0.mlp.down_proj.weight": rng.standard_normal((256, 512)).astype(np.float32),
         "lm_head.weight": rng.standard_normal((256, 256)).astype(np.float32),
         "model.layers.0.mlp.up_proj.weight": rng.standard_normal((512, 256)).astype(np.float16),
         # rows of 576: Q5_0 in the GGUF, Q4_K in APR's padded rows
         "model.layers.0.self_attn.o_proj.weight": rng.standard_normal((96, 576)).astype(np.float32)}
    save_file(t, str(tmp_path / "m.safetensors"))
    files = (tmp_path / "x.npy", tmp_path / "m.safetensors")
    native = json.loads(run_native(KQUANTS, *files, tmp_path=tmp_path))
    for kernels in ("numpy", "wasm", "js"):
        got = json.loads(run_in_pyodide(KQUANTS, *files, kernels=kernels))
        assert got["kernels"] == {"numpy": [False] * 5, "js": [True, True, False, False, False],
                                  "wasm": [True] * 5}[kernels]
        assert got["F16 kernel"] == (kernels == "wasm")
        for k in ("Q4_K", "Q6_K", "Q4_0", "APR_Q4", "F16", "gguf", "apr", "apr-k"):
            assert got[k] == native[k], (kernels, k)
        # the report's figures: the same up to the order of the sums of squares (numpy's
        # einsum, the wasm kernels' halving), the max error exactly
        for fmt in ("apr", "gguf", "apr-k"):
            assert len(got[fmt + " report"]) == len(native[fmt + " report"]) >= 3
            assert {t["dtype_out"] for t in got["gguf report"]} >= {"Q4_K", "Q6_K"}
            for t, u in zip(got[fmt + " report"], native[fmt + " report"]):
                assert t["max_abs_err"] == u["max_abs_err"] and t["mse"] > 0, (kernels, t["name"])
                assert t["mse"] == pytest.approx(u["mse"], rel=1e-5), (kernels, t["name"])


def test_module_worker_loads_runtime_numpy_and_core_in_chromium(dist_dir, page, tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from serve import start_server
    root = tmp_path / "site"
    root.mkdir()
    (root / "static").symlink_to(dist_dir / "static", target_is_directory=True)
    (root / "probe-worker.mjs").write_text(PROBE_WORKER)
    (root / "probe.html").write_text(PROBE_PAGE)
    server, url = start_server(root)
    try:
        page.goto(url + "probe.html")
        result = page.evaluate("window.probe")
    finally:
        server.shutdown()
        server.server_close()
    assert result.get("ok"), result
    assert result["numpy"] == "2.0.2"
    assert result["core"] is True
    assert all(u.startswith(url) for u in page.request_urls), page.request_urls
    assert url + "static/pyodide/" + NUMPY_WHEEL in page.request_urls
