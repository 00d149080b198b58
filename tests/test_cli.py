"""python -m q4apr: quantize, inspect, verify, exit codes, atomic output."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import llama_like

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "py"))
    return subprocess.run([sys.executable, "-m", "q4apr", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


@pytest.fixture
def model(tmp_path):
    from safetensors.numpy import save_file
    p = tmp_path / "model.safetensors"
    save_file(llama_like(np.random.default_rng(0)), str(p))
    return p


def test_quantize_inspect_verify(model, tmp_path):
    r = cli("quantize", model, "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    out = tmp_path / "model.apr"
    assert out.exists() and rep["output"]["name"] == "model.apr"
    assert rep["output"]["bytes"] == out.stat().st_size
    r = cli("inspect", out)
    assert r.returncode == 0 and "APR_Q4" in r.stdout and "lm_head.weight" in r.stdout
    r = cli("verify", out)
    assert r.returncode == 0 and "intact" in r.stdout
    info = json.loads(cli("inspect", out, "--json").stdout)
    assert info["metadata"]["original_format"] == "safetensors"


def test_gguf_by_output_name_and_table(model, tmp_path):
    out = tmp_path / "x.Q4_0.gguf"
    r = cli("quantize", model, "-o", out, "--keep-embeddings-f16")
    assert r.returncode == 0, r.stderr
    assert "Q4_0" in r.stdout and "kept at F16" in r.stdout and out.read_bytes()[:4] == b"GGUF"
    assert cli("inspect", out).returncode == 0


def test_bad_input_exit_2_names_the_file_and_leaves_nothing(tmp_path):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    r = cli("quantize", bad, "-o", tmp_path / "o.apr")
    assert r.returncode == 2
    assert "junk.safetensors" in r.stderr and "JSON" in r.stderr and "Traceback" not in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["junk.safetensors"]


def test_never_writes_over_an_input_or_an_existing_file(model, tmp_path):
    before = model.read_bytes()
    r = cli("quantize", model, "-o", model)
    assert r.returncode == 2 and "overwrite" in r.stderr
    assert model.read_bytes() == before
    (tmp_path / "model.apr").write_bytes(b"keep me")
    r = cli("quantize", model)
    assert r.returncode == 2 and "--force" in r.stderr
    assert (tmp_path / "model.apr").read_bytes() == b"keep me"
    assert cli("quantize", model, "--force").returncode == 0


def test_verify_reports_damage_exit_1(model, tmp_path):
    assert cli("quantize", model).returncode == 0
    out = tmp_path / "model.apr"
    data = bytearray(out.read_bytes())
    data[-100] ^= 1
    out.write_bytes(bytes(data))
    r = cli("verify", out)
    assert r.returncode == 1 and "checksum" in r.stdout


def test_usage_error_exit_2():
    assert cli("quantize").returncode == 2
    assert cli("frobnicate").returncode == 2


def test_output_permissions_follow_the_umask(model, tmp_path):
    assert cli("quantize", model).returncode == 0
    mode = (tmp_path / "model.apr").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_a_closed_pipe_ends_quietly(model, tmp_path):
    """`q4apr inspect m.apr | head -1`: no traceback, no 'internal error' (as gguf-dump)."""
    from safetensors.numpy import save_file
    many = tmp_path / "many.safetensors"   # a table far longer than a pipe's buffer
    save_file({f"model.layers.{i}.some_rather_long_tensor_name.weight": np.zeros(4, np.float32)
               for i in range(4000)}, str(many))
    out = tmp_path / "m.apr"
    assert cli("quantize", many, "-o", out).returncode == 0
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "py"))
    r = subprocess.run(f"'{sys.executable}' -m q4apr inspect '{out}' | head -c 10",
                       shell=True, capture_output=True, text=True, env=env, timeout=120,
                       executable="/bin/bash")
    assert len(r.stdout) == 10
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr


def test_help_names_both_formats_and_types():
    r = cli("--help")
    assert r.returncode == 0 and "Q4_K_M" in r.stdout and "GGUF" in r.stdout and "APR" in r.stdout


def test_inspect_counts_a_tied_head_once(tmp_path):
    """An APR's tied head (0 bytes, its full shape) is not counted again in the parameters."""
    from safetensors.numpy import save_file
    t = llama_like(np.random.default_rng(0))
    t.pop("lm_head.weight")
    src = tmp_path / "m.safetensors"
    save_file(t, str(src))
    from q4apr.formats import apr
    from q4apr.model import TensorEntry
    from q4apr.dtypes import F32
    import q4apr
    with q4apr.open_model([str(src)]) as m:
        emb = next(e for e in m.tensors if e.name == "model.embed_tokens.weight")
        m.tensors.append(TensorEntry("lm_head.weight", emb.shape, F32, 0, emb.path,
                                     opener=lambda: open(os.devnull, "rb"),
                                     tied_to=emb.name))
        out = tmp_path / "m.apr"
        q4apr.quantize(m, q4apr.FileSink(str(out)), q4apr.Options(format="apr"))
    params = sum(int(np.prod(a.shape)) for a in t.values())
    info = json.loads(cli("inspect", out, "--json").stdout)
    assert info["params"] == params
    assert info["metadata"]["param_count"] == params
    head = next(x for x in info["tensors"] if x["name"] == "lm_head.weight")
    assert head["nbytes"] == 0 and head["tied_to"] == "model.embed_tokens.weight"
    assert "tied to model.embed_tokens.weight" in cli("inspect", out).stdout
    assert apr.read(str(out)).tensors[0].tied_to == "model.embed_tokens.weight"
