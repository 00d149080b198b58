// numpy's wheel installed by unpacking it into site-packages here, instead of Pyodide's
// loadPackage, which unpacks it with zipfile's extractall (zlib in wasm, ~0.2 s for numpy's
// 12.7 MB) and then compiles and links all 19 of numpy's shared libraries, where `import
// numpy` needs 3: here the other 16 load only if their module is ever imported (CPython's
// dlopen, which Pyodide serves from the file system).  Unpacking is a plain loop (the
// member's bytes sliced out of the wheel, zlib.decompress, one write) rather than
// extractall's chunked reads; the browser's own DecompressionStream was slower still, as
// a stream per member (~0.3 s for 338 members in Chromium).  The wheel's bytes are checked
// by fetch against the sha256 in dist's pyodide-lock.json, as loadPackage checks them.

// Fetch a wheel, its integrity ("sha256-<base64>") checked by fetch.  Resolves to its bytes.
export async function fetchWheel(url, integrity) {
  const res = await fetch(url, { integrity });
  if (!res.ok) throw new Error(`${url.pathname.split("/").pop()} could not be fetched (HTTP ${res.status})`);
  return new Uint8Array(await res.arrayBuffer());
}

const UNPACK_PY = String.raw`
def unpack_wheel(wheel, name, site):
    """Unpack the wheel (a JS Uint8Array) into site; the files' paths there."""
    import io, os, struct, zipfile, zlib
    buf = wheel.to_py()
    made = set()
    written = []
    for info in zipfile.ZipFile(io.BytesIO(buf)).infolist():
        if info.is_dir():
            continue
        member = info.filename
        if member.startswith("/") or ".." in member.split("/"):
            raise ValueError(f"{name}: member {member!r} is outside the wheel's folder")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ValueError(f"{name}: {member} is compressed with method {info.compress_type}")
        name_len, extra_len = struct.unpack_from("<HH", buf, info.header_offset + 26)
        start = info.header_offset + 30 + name_len + extra_len
        packed = buf[start:start + info.compress_size]
        try:
            data = zlib.decompress(packed, -15) if info.compress_type == zipfile.ZIP_DEFLATED else packed
        except zlib.error:
            data = None
        if data is None or len(data) != info.file_size or zlib.crc32(data) != info.CRC:
            raise ValueError(f"{name}: {member} is damaged")
        path = f"{site}/{member}"
        folder = path.rpartition("/")[0]
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        with open(path, "wb") as f:
            f.write(data)
        written.append(member)
    return written
`;

// Unpack `bytes` (a wheel) into Pyodide's site-packages.  Returns the files' paths there.
export function installWheel(py, bytes, name) {
  const ns = py.toPy({});   // fresh globals
  try {
    py.runPython(UNPACK_PY, { globals: ns });
    const unpack = ns.get("unpack_wheel");
    try {
      const written = unpack(bytes, name, sitePackages(py));
      try { return written.toJs(); } finally { written.destroy(); }
    } finally {
      unpack.destroy();
    }
  } finally {
    ns.destroy();
  }
}

// The pool's workers get a wheel's files as the main worker unpacked them, and only write
// them (~0.05 s, where unpacking the wheel took ~0.14 s): readFiles there, writeFiles here.
// files: [[path under site-packages, bytes], ...].
export function readFiles(py, paths) {
  const site = sitePackages(py);
  return paths.map((p) => [p, py.FS.readFile(`${site}/${p}`)]);
}

// Returns the files' paths, as installWheel does.
export function writeFiles(py, files) {
  const site = sitePackages(py);
  return files.map(([p, data]) => {
    const path = `${site}/${p}`;
    py.FS.mkdirTree(path.slice(0, path.lastIndexOf("/")));
    py.FS.writeFile(path, data);
    return p;
  });
}

function sitePackages(py) {
  return py.runPython("import sys\nnext(p for p in sys.path if p.endswith('/site-packages'))");
}
