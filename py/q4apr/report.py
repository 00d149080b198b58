"""What a run did, as data: the page and the CLI both display this."""

import math
from dataclasses import asdict, dataclass, field


def snr_db(signal, noise):
    """Signal-to-noise ratio in dB (sum of squares of the weights over that of the error);
    None without a signal, inf for an exact round trip."""
    if signal is None or noise is None or signal <= 0:
        return None
    return math.inf if noise <= 0 else 10.0 * math.log10(signal / noise)


@dataclass
class TensorReport:
    name: str
    shape: list
    dtype_in: str
    dtype_out: str
    bytes_in: int
    bytes_out: int
    action: str
    reason: str
    mse: float | None = None
    max_abs_err: float | None = None
    warning: str | None = None
    non_finite: int = 0      # NaN/Inf values written (only with allow_non_finite)
    source: str | None = None       # the input's name, when the output renames the tensor
    snr_db: float | None = None


@dataclass
class Report:
    input_format: str
    input_files: list
    input_bytes: int
    output_format: str
    output_name: str
    tensors: list = field(default_factory=list)
    output_bytes: int = 0
    params: int = 0
    seconds: float = 0.0
    model: dict | None = None       # a model folder's description (architecture, tokenizer)
    runtimes: list = field(default_factory=list)
    signal: float = 0.0             # sums of squares over every quantized tensor
    noise: float = 0.0

    def add_tensor(self, t, signal=None, noise=None):
        if signal is not None and noise is not None:
            t.snr_db = snr_db(signal, noise)
            self.signal += signal
            self.noise += noise
        self.tensors.append(t)

    def to_dict(self):
        bytes_in = sum(t.bytes_in for t in self.tensors)
        bytes_out = sum(t.bytes_out for t in self.tensors)
        elems = sum(math.prod(t.shape) for t in self.tensors)
        return {
            "input": {"format": self.input_format, "files": list(self.input_files),
                      "bytes": self.input_bytes},
            "output": {"format": self.output_format, "bytes": self.output_bytes,
                       "name": self.output_name},
            "model": self.model,
            "runtimes": list(self.runtimes),
            "tensors": [_finite(asdict(t)) for t in self.tensors],
            "totals": {
                "params": self.params,
                "bytes_in": bytes_in,
                "bytes_out": bytes_out,
                "ratio": bytes_in / bytes_out if bytes_out else None,
                "bits_per_weight": 8 * bytes_out / elems if elems else None,
                "file_ratio": self.input_bytes / self.output_bytes if self.output_bytes else None,
                "seconds": self.seconds,
                "tensors": len(self.tensors),
                "quantized": sum(t.action == "quantize" for t in self.tensors),
                "non_finite": sum(t.non_finite for t in self.tensors),
                "snr_db": _json_float(snr_db(self.signal, self.noise)),
            },
        }


def _json_float(v):
    """inf (an exact round trip) as a string: JSON has no infinity."""
    return "inf" if v == math.inf else v


def _finite(d):
    d["snr_db"] = _json_float(d["snr_db"])
    return d


def human_bytes(n):
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def format_table(report):
    """The report as a plain-text table for a terminal."""
    d = report.to_dict()
    rows = [("tensor", "shape", "dtype", "size", "mse", "snr", "why")]
    for t in d["tensors"]:
        rows.append((t["name"], "×".join(map(str, t["shape"])) or "scalar",
                     f"{t['dtype_in']} → {t['dtype_out']}",
                     f"{human_bytes(t['bytes_in'])} → {human_bytes(t['bytes_out'])}",
                     f"{t['mse']:.3g}" if t["mse"] is not None else "",
                     _db(t["snr_db"]),
                     t["reason"] + (f" [{t['warning']}]" if t["warning"] else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows]
    lines.insert(1, "-" * min(120, len(lines[0])))
    tot = d["totals"]
    ratio = f"{tot['ratio']:.2f}×" if tot["ratio"] else "n/a"
    if tot["bits_per_weight"]:
        ratio += f", {tot['bits_per_weight']:.2f} bits/weight"
    lines.append("")
    bad = [t for t in d["tensors"] if t["non_finite"]]
    if bad:
        lines.append(f"non-finite values written as they are (allowed) in {len(bad)} tensor(s):")
        lines.extend(f"  {t['name']}: {t['non_finite']:,} NaN/Inf" for t in bad)
        lines.append("")
    lines.append(f"{tot['tensors']} tensors ({tot['quantized']} quantized), "
                 f"{tot['params']:,} params: {human_bytes(d['input']['bytes'])} → "
                 f"{human_bytes(d['output']['bytes'])} ({ratio} on tensor data) "
                 f"in {tot['seconds']:.2f} s"
                 + (f", SNR {_db(tot['snr_db'])}" if tot["snr_db"] is not None else ""))
    m = d["model"]
    if m:
        tok = m["tokenizer"]
        lines.append(f"model: {m['architecture']}, {m['layers']} layers, hidden {m['hidden_size']}, "
                     f"vocabulary {m['vocab_size']:,}, tokenizer {tok.get('kind')} "
                     f"({tok.get('pre') or tok.get('model') or ''})")
        if m["ignored"]:
            lines.append("ignored: " + ", ".join(m["ignored"]))
    for r in d["runtimes"]:
        verdict = r.get("verdict") or ("can load it" if r["loads"] else "cannot run it")
        lines.append(f"{r['runtime']}: {verdict} ({r['why']})")
    return "\n".join(lines)


def _db(v):
    if v is None:
        return ""
    return "exact" if v == "inf" else f"{v:.1f} dB"
