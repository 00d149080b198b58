"""q4apr (or python -m q4apr): quantize, inspect and verify model files from a terminal.

Exit codes: 0 done, 1 verify found damage, 2 bad input or usage, 3 internal error,
130 interrupted. Output is written atomically and never over an input.
"""

import argparse
import json
import os
import sys
import time
import traceback

from ._version import __version__
from .errors import Cancelled, Q4Error
from .inspection import inspect_model, verify_file
from .formats import open_model
from .heap import keep_freed_memory
from .pipeline import MAX_THREADS, Options, output_name, quantize
from .report import format_table, human_bytes
from .sinks import FileSink

EXIT_OK, EXIT_DAMAGED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def build_parser():
    p = argparse.ArgumentParser(prog="q4apr",
                                description="Quantize model weights to 4 bits: an Aprender APR "
                                            "or a llama.cpp GGUF, with llama-quantize's Q4_0 "
                                            "or Q4_K_M mixture.")
    p.add_argument("--version", action="version", version=f"q4apr {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quantize", help="write a 4-bit APR or GGUF file")
    q.add_argument("inputs", nargs="+", metavar="IN",
                   help="a Hugging Face model folder (config.json, tokenizer.json, *.safetensors) "
                        "or its files; or one .safetensors (or shards + index.json), .gguf, "
                        ".apr, .npy or .npz")
    q.add_argument("-o", "--output", help="output file (default: beside the input, "
                                          "model.apr or model.Q4_0.gguf)")
    q.add_argument("--format", choices=("apr", "gguf"),
                   help="output format (default: from the -o name, else apr)")
    q.add_argument("--keep-embeddings-f16", action="store_true",
                   help="keep the token embedding at F16")
    q.add_argument("--keep-output-f16", action="store_true", help="keep the output head at F16")
    q.add_argument("--type", choices=("Q4_0", "Q4_K_M"), default="Q4_0",
                   help="llama-quantize's type: its per-tensor mixture (default Q4_0; "
                        "Q4_K_M: Q4_K with Q6_K where llama.cpp puts more bits)")
    q.add_argument("--pure", action="store_true",
                   help="no mixture, as llama-quantize --pure: every quantizable matrix at "
                        "the type's base type (APR: 1-D tensors too)")
    q.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="keep tensors whose name matches this glob (repeatable)")
    q.add_argument("--allow-non-finite", action="store_true",
                   help="write NaN/Inf weights as they are (counted in the report) instead of "
                        "refusing them; a tensor that would be quantized is kept at F32")
    q.add_argument("--chunk-mb", type=float, default=4.0, help="working chunk size (default 4)")
    q.add_argument("--threads", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="chunks converted at once, by worker processes on Linux, threads "
                        "elsewhere (default: the cores there are, here "
                        f"{os.cpu_count() or 1}); the output is the same for every N")
    q.add_argument("--force", action="store_true", help="replace an existing output file")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    for name, text in (("inspect", "show the header, metadata and tensor table"),
                       ("verify", "check structure, checksums and every tensor's data")):
        s = sub.add_parser(name, help=text)
        s.add_argument("inputs", nargs="+", metavar="FILE")
        s.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return {"quantize": cmd_quantize, "inspect": cmd_inspect, "verify": cmd_verify}[
            args.command](args)
    except Cancelled:
        print("cancelled: no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\ninterrupted: no output written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Q4Error as e:
        print(f"error: {e.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:   # `q4apr inspect m.apr | head`: the reader left; end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # so the exit's flush does not fail again
        return EXIT_OK
    except Exception as e:  # a bug of ours: say so, with the traceback for the report
        traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL


def cmd_quantize(args):
    keep_freed_memory()
    fmt = args.format or ("gguf" if (args.output or "").lower().endswith(".gguf") else "apr")
    options = Options(format=fmt, keep_embeddings_f16=args.keep_embeddings_f16,
                      keep_output_f16=args.keep_output_f16, pure=args.pure, type=args.type,
                      skip=tuple(args.skip), chunk_bytes=int(args.chunk_mb * (1 << 20)),
                      allow_non_finite=args.allow_non_finite,
                      threads=min(args.threads, MAX_THREADS))
    with open_model(args.inputs) as model:
        named = model.name if model.description is not None else None
        out = args.output or os.path.join(os.path.dirname(os.path.normpath(args.inputs[0])),
                                          output_name(args.inputs, fmt, named, args.type))
        if os.path.exists(out) and not args.force and not any(
                os.path.exists(i) and os.path.samefile(i, out) for i in args.inputs):
            raise Q4Error(f"{out} exists; pass --force to replace it")
        sink = FileSink(out, inputs=args.inputs)
        bar = _Bar() if sys.stderr.isatty() and not args.quiet and not args.json else None
        report = quantize(model, sink, options, progress=bar)
        if bar:
            bar.close()
    report.output_name = os.path.basename(out)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(format_table(report))
        print(f"wrote {out}")
    return EXIT_OK


def cmd_inspect(args):
    with open_model(args.inputs) as model:
        info = inspect_model(model)
    if args.json:
        print(json.dumps(info, indent=1, ensure_ascii=False))
        return EXIT_OK
    print(f"{', '.join(info['files'])}: {info['format']}, {human_bytes(info['bytes'])}, "
          f"{len(info['tensors'])} tensors, {info['params']:,} params")
    m = info.get("model")
    if m:
        print(f"  model: {m['architecture']} ({m['gguf_architecture']} in GGUF), {m['layers']} layers, "
              f"hidden {m['hidden_size']}, {m['heads']}/{m['kv_heads']} heads, vocabulary "
              f"{m['vocab_size']:,}, tokenizer {m['tokenizer'].get('kind')}")
        if m["ignored"]:
            print("  ignored: " + ", ".join(m["ignored"]))
    for k in ("version", "alignment", "flags"):
        if info.get(k) is not None:
            print(f"  {k}: {info[k]:#06x}" if k == "flags" else f"  {k}: {info[k]}")
    if info["metadata"]:
        print("metadata:")
        for k, v in info["metadata"].items():
            text = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
            print(f"  {k}: {text[:100] + '…' if len(text) > 100 else text}")
    print("tensors:")
    w = max((len(t["name"]) for t in info["tensors"]), default=4)
    for t in info["tensors"]:
        shape = "×".join(map(str, t["shape"])) or "scalar"
        size = f"tied to {t['tied_to']}" if t.get("tied_to") else human_bytes(t["nbytes"])
        print(f"  {t['name']:<{w}}  {t['dtype']:<7} {shape:<20} {size}")
    return EXIT_OK


def cmd_verify(args):
    result = verify_file(args.inputs)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for c in result["checks"]:
            print(f"{'ok ' if c['ok'] else 'BAD'}  {c['name']}: {c['detail']}")
        print("verified: intact" if result["ok"] else "verify FAILED")
    return EXIT_OK if result["ok"] else EXIT_DAMAGED


class _Bar:
    """A one-line progress bar on stderr, redrawn at most 10 times a second."""

    def __init__(self):
        self.t0 = self.last = time.monotonic()

    def __call__(self, p):
        now = time.monotonic()
        if now - self.last < 0.1 and p.done < p.total:
            return
        self.last = now
        frac = p.done / p.total if p.total else 1.0
        rate = p.done / max(now - self.t0, 1e-9)
        bar = "#" * int(frac * 30)
        name = p.tensor if len(p.tensor) <= 40 else "…" + p.tensor[-39:]
        sys.stderr.write(f"\r[{bar:<30}] {frac:6.1%} {human_bytes(rate)}/s {name:<40}")
        sys.stderr.flush()

    def close(self):
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()
