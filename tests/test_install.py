"""`pip install ./py` gives a working `q4apr` command: the wheel is built, installed in a
clean venv outside the checkout, and its `q4apr quantize` writes the same bytes as the
in-tree `python -m q4apr`.

Offline by design, so it cannot flake on the network:
- the wheel is built from a copy of py/ in a temporary folder (setuptools builds in
  place: build/ and *.egg-info stay out of the checkout), without build isolation
  when this interpreter has setuptools >= 70.1 (which writes wheels by itself); with an
  older or no setuptools pip's isolated build fetches setuptools from PyPI;
- the venv is a fresh `python -m venv` (its pip from ensurepip).  numpy is the one
  dependency and it is not downloaded: a .pth file makes this interpreter's numpy
  package and its dist-info (and nothing else of .venv) visible, and the wheel is
  installed with `--no-index`, so pip must find `numpy>=2.0` satisfied from the
  wheel's own metadata or fail.
"""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from helpers import llama_like, safetensors_bytes, write_bytes

import q4apr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def clean_env():
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")}
    return dict(env, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")


def build_wheel(tmp):
    src = os.path.join(tmp, "src")
    shutil.copytree(os.path.join(REPO, "py"), src,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info"))
    out = os.path.join(tmp, "wheels")
    try:
        import setuptools
        isolated = tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1)
    except ImportError:
        isolated = True
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, src,
       *(() if isolated else ("--no-build-isolation",)), env=clean_env(), cwd=tmp)
    wheels = glob.glob(os.path.join(out, "q4apr-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def numpy_view(tmp):
    """A folder holding only links to this interpreter's numpy (package, libs, dist-info)."""
    site = os.path.dirname(os.path.dirname(np.__file__))
    view = os.path.join(tmp, "numpy-only")
    os.makedirs(view)
    names = [n for n in os.listdir(site)
             if n == "numpy" or n == "numpy.libs" or (n.startswith("numpy-") and n.endswith(".dist-info"))]
    assert "numpy" in names and any(n.endswith(".dist-info") for n in names), names
    for n in names:
        os.symlink(os.path.join(site, n), os.path.join(view, n))
    return view


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("install"))
    assert not tmp.startswith(REPO)
    wheel = build_wheel(tmp)
    venv = os.path.join(tmp, "venv")
    sh(sys.executable, "-m", "venv", venv, env=clean_env())
    py = os.path.join(venv, "bin", "python")
    purelib = sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                 env=clean_env()).strip()
    with open(os.path.join(purelib, "numpy_only.pth"), "w") as f:
        f.write(numpy_view(tmp) + "\n")
    sh(py, "-m", "pip", "install", "-q", "--no-index", "--no-cache-dir", wheel, env=clean_env(),
       cwd=tmp)
    return {"tmp": tmp, "wheel": wheel, "venv": venv, "py": py,
            "q4apr": os.path.join(venv, "bin", "q4apr")}


def test_wheel_metadata(installed):
    with zipfile.ZipFile(installed["wheel"]) as z:
        names = z.namelist()
        dist = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(f"{dist}/METADATA").decode()
        entry = z.read(f"{dist}/entry_points.txt").decode()
    assert f"Version: {q4apr.__version__}\n" in meta
    assert "Requires-Python: >=3.11" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires == ["Requires-Dist: numpy>=2.0"], requires
    assert "q4apr = q4apr.cli:main" in entry
    py_files = sorted(n for n in names if n.endswith(".py"))
    in_tree = sorted(os.path.relpath(p, os.path.join(REPO, "py")).replace(os.sep, "/")
                     for p in glob.glob(os.path.join(REPO, "py", "q4apr", "**", "*.py"), recursive=True))
    assert py_files == in_tree     # the same sources the site zips


def test_installed_command_is_the_core(installed):
    out = sh(installed["q4apr"], "--version", env=clean_env(), cwd=installed["tmp"])
    assert out.strip() == f"q4apr {q4apr.__version__}"
    out = sh(installed["py"], "-m", "q4apr", "--version", env=clean_env(), cwd=installed["tmp"])
    assert out.strip() == f"q4apr {q4apr.__version__}"
    where = sh(installed["py"], "-c", "import q4apr, numpy; print(q4apr.__file__); "
               "print(numpy.__version__)", env=clean_env(), cwd=installed["tmp"]).split()
    assert where[0].startswith(installed["venv"]) and not where[0].startswith(REPO)
    assert where[1] == np.__version__


@pytest.mark.parametrize("fmt", ["apr", "gguf"])
def test_installed_quantize_gives_the_in_tree_bytes(installed, tmp_path, fmt):
    rng = np.random.default_rng(11)
    tensors = {k: ("F32", v.shape, v.tobytes()) for k, v in llama_like(rng).items()}
    model = write_bytes(tmp_path / "model.safetensors", safetensors_bytes(tensors))
    ext = "apr" if fmt == "apr" else "Q4_0.gguf"
    a, b = tmp_path / f"installed.{ext}", tmp_path / f"in-tree.{ext}"
    sh(installed["q4apr"], "quantize", model, "-o", a, "-q", env=clean_env(),
       cwd=installed["tmp"])
    sh(sys.executable, "-m", "q4apr", "quantize", model, "-o", b, "-q",
       env=dict(clean_env(), PYTHONPATH=os.path.join(REPO, "py")), cwd=REPO)
    assert a.read_bytes() == b.read_bytes()
    out = sh(installed["q4apr"], "verify", a, env=clean_env(), cwd=installed["tmp"])
    assert "verified: intact" in out
    if fmt == "apr":
        assert f'"writer":"q4apr {q4apr.__version__}"'.encode() in a.read_bytes()
