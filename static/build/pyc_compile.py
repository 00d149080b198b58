"""Rewrite a wheel or the core's zip with precompiled bytecode (run under Pyodide's CPython).

    pyc_compile.py numpy:IN.whl:OUT.whl   every .py becomes a .pyc in its place (legacy,
                                          "sourceless" layout, as `pyodide py-compile` does);
                                          RECORD is rewritten to match
    pyc_compile.py core:IN.zip:OUT.zip    the .py stay; q4apr/**/__pycache__/X.cpython-312.pyc
                                          is added beside each (tracebacks keep their source)
    pyc_compile.py stdlib:IN.zip:OUT.zip  Pyodide's python_stdlib.zip (imported from the zip
                                          by zipimport): every .py becomes a .pyc in its place,
                                          as in CPython's own embeddable zip

The .pyc are unchecked-hash pycs (PEP 552): no mtime in them, and the importer never
stats or rereads the source, so the bytes depend only on the sources and this Python.
Members keep their order, timestamps and modes; the output is deterministic.
"""
import base64
import hashlib
import importlib._bootstrap_external as bootstrap
import importlib.util
import sys
import zipfile

SITE = "/lib/python%d.%d/site-packages/" % sys.version_info[:2]
STDLIB_ZIP = "/lib/python%d%d.zip/" % sys.version_info[:2]
CORE_DIR = "/lib/q4apr/"


def to_pyc(source, filename):
    code = compile(source, filename, "exec", dont_inherit=True, optimize=-1)
    return bytes(bootstrap._code_to_hash_pyc(code, importlib.util.source_hash(source), checked=False))


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (name, digest, len(data))


def clone(info, name):
    new = zipfile.ZipInfo(name, date_time=info.date_time)
    new.compress_type = info.compress_type
    new.external_attr = info.external_attr
    new.create_system = info.create_system
    return new


def sourceless(info, data, root):
    """The member, or its .pyc in its place if it is a module (compiled as found at root)."""
    if info.filename.endswith(".py") and ".dist-info/" not in info.filename:
        try:
            return clone(info, info.filename[:-3] + ".pyc"), to_pyc(data, root + info.filename)
        except SyntaxError:
            pass  # not a module (kept as it is)
    return clone(info, info.filename), data


def rewrite_wheel(src, dst):
    out, record = [], None
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                record = info
                continue
            out.append(sourceless(info, data, SITE))
    if record is None:
        raise SystemExit("%s has no RECORD" % src)
    lines = [record_line(i.filename, d) for i, d in out] + [record.filename + ",,"]
    out.append((clone(record, record.filename), ("\n".join(lines) + "\n").encode()))
    write(dst, out)
    return sum(i.filename.endswith(".pyc") for i, _ in out)


def rewrite_core(src, dst):
    out, n = [], 0
    tag = sys.implementation.cache_tag
    with zipfile.ZipFile(src) as z:
        for info in z.infolist():
            data = z.read(info)
            out.append((clone(info, info.filename), data))
            if info.filename.endswith(".py"):
                folder, _, base = info.filename.rpartition("/")
                name = "%s/__pycache__/%s.%s.pyc" % (folder, base[:-3], tag)
                out.append((clone(info, name), to_pyc(data, CORE_DIR + info.filename)))
                n += 1
    write(dst, sorted(out, key=lambda m: m[0].filename))
    return n


def rewrite_stdlib(src, dst):
    with zipfile.ZipFile(src) as z:
        out = [sourceless(info, z.read(info), STDLIB_ZIP) for info in z.infolist()]
    write(dst, out)
    return sum(i.filename.endswith(".pyc") for i, _ in out)


def write(dst, members):
    with zipfile.ZipFile(dst, "w") as z:
        for info, data in members:
            z.writestr(info, data, compresslevel=9 if info.compress_type == zipfile.ZIP_DEFLATED else None)


def main():
    for job in sys.argv[1:]:
        kind, src, dst = job.split(":")
        n = {"numpy": rewrite_wheel, "core": rewrite_core, "stdlib": rewrite_stdlib}[kind](src, dst)
        print("[pyc_compile] %s: %d modules compiled -> %s" % (kind, n, dst), file=sys.stderr)


main()
