"""Fuzz every reader with mutated valid files; report executions and findings per format.

python bench/fuzz.py [--seconds N] [--format F|all] [--seed S] [--engine auto|atheris|builtin]
                     [--findings DIR]

Seeds are valid files written by the real packages (safetensors, gguf-py, numpy) and by our
own APR writer (tests/hostile.py). Each input goes through q4apr.open_model and a full
quantize to APR and to GGUF (small chunks). A finding is any exception that is not a
q4apr.Q4Error, a run over 5 s (a hang), a read sized beyond the file, or an input file
that changed; each is saved under --findings (default $TMPDIR/q4apr-fuzz-findings/) with
its traceback.

With atheris installed (pip install atheris) and --engine auto|atheris, libFuzzer drives
coverage-guided mutation of one format at a time; otherwise a built-in loop applies 1-4
mutations (bit flips, byte insert/delete, truncation, splicing, boundary integers, APR CRCs
recomputed) to seeds and to inputs that reached a new outcome.
"""

import argparse
import hashlib
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "py"))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

HANG_SECONDS = 5
hostile = q4apr = None   # imported by load(), under atheris's instrumentation when it runs


def load(instrument):
    """Import the harness and the core (instrumented for coverage when atheris drives)."""
    global hostile, q4apr
    if instrument:
        import atheris
        with atheris.instrument_imports(include=["q4apr", "zipfile", "json", "ast"]):
            import q4apr as core
            import hostile as harness
    else:
        import q4apr as core
        import hostile as harness
    hostile, q4apr = harness, core


class Stats:
    def __init__(self, fmt, findings_dir):
        self.fmt, self.dir = fmt, findings_dir
        self.execs = self.bad_input = self.ok = 0
        self.findings = {}   # label -> count
        self.outcomes = set()

    def line(self):
        found = sum(self.findings.values())
        return (f"{self.fmt:12s} execs {self.execs:8d}  ok {self.ok:7d}  BadInput {self.bad_input:8d}  "
                f"findings {found} ({len(self.findings)} distinct)")


def run_one(stats, files, workdir):
    """Write the file set, run the harness, record the outcome; True if it was new."""
    for name in os.listdir(workdir):
        os.unlink(os.path.join(workdir, name))
    paths = hostile.write_set(workdir, files)
    stats.execs += 1
    try:
        err = hostile.exercise(paths, chunk_bytes=256, timeout=HANG_SECONDS)
    except q4apr.Q4Error as e:   # not BadInput: still a finding (a user would see a wrong kind)
        return _finding(stats, files, e)
    except Exception as e:  # noqa: BLE001 - that is the point
        return _finding(stats, files, e)
    if err is None:
        stats.ok += 1
        key = "ok"
    else:
        stats.bad_input += 1
        key = " ".join(re.findall(r"[A-Za-z_]{3,}", err.problem)[:4])
    new = key not in stats.outcomes
    stats.outcomes.add(key)
    return new


def _finding(stats, files, exc):
    label = hostile.classify(exc)
    first = label not in stats.findings
    stats.findings[label] = stats.findings.get(label, 0) + 1
    if first:
        os.makedirs(stats.dir, exist_ok=True)
        digest = hashlib.sha256(b"".join(files.values())).hexdigest()[:12]
        case = os.path.join(stats.dir, f"{stats.fmt}-{digest}")
        os.makedirs(case, exist_ok=True)
        hostile.write_set(case, files)
        with open(os.path.join(case, "TRACEBACK.txt"), "w") as f:
            f.write(label + "\n\n" + "".join(traceback.format_exception(exc)))
        print(f"  FINDING {stats.fmt}: {label}: {str(exc)[:200]}", flush=True)
    return True


def builtin_loop(fmt, seed_sets, seconds, rng, findings_dir):
    stats = Stats(fmt, findings_dir)
    pool = list(seed_sets)
    splice = [data for s in seed_sets for data in s.values()]
    workdir = tempfile.mkdtemp(prefix=f"q4fuzz-{fmt}-")
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            files = hostile.random_case(rng, rng.choice(pool), splice)
            if run_one(stats, files, workdir) and len(pool) < 500:
                pool.append(files)   # reached a new outcome: mutate it further
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return stats


def atheris_run(fmt, seed_sets, seconds, findings_dir):
    """One format under libFuzzer; the input bytes are the mutated file (first of the set)."""
    import atheris
    stats = Stats(fmt, findings_dir)
    base = dict(seed_sets[0])
    target = sorted(base)[0] if fmt != "index" else "model.safetensors.index.json"
    workdir = tempfile.mkdtemp(prefix=f"q4fuzz-{fmt}-")
    corpus = tempfile.mkdtemp(prefix=f"q4corpus-{fmt}-")
    for i, s in enumerate(seed_sets):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(s.get(target, next(iter(s.values()))))
    end = time.monotonic() + seconds

    last = [time.monotonic()]

    def test_one(data):
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(stats.line(), flush=True)
        if time.monotonic() > end:
            print(stats.line(), flush=True)
            _summary([stats])
            os._exit(0)
        files = dict(base)
        data = bytes(data)
        if fmt == "apr" and len(data) % 8:   # most inputs get their CRCs made right again,
            data = hostile.fix_apr_crcs(data)  # so that mutations reach past the checksums
        files[target] = data
        run_one(stats, files, workdir)

    # -timeout=0: hangs are caught by our own 5 s alarm (libFuzzer's would take SIGALRM)
    atheris.Setup([sys.argv[0], "-rss_limit_mb=4096", "-timeout=0", "-print_final_stats=0",
                   f"-max_total_time={int(seconds) + 60}", corpus], test_one)
    atheris.Fuzz()


def _summary(all_stats):
    print("\nformat       executions  findings")
    for s in all_stats:
        print(f"{s.fmt:12s} {s.execs:10d}  {sum(s.findings.values())}")
        for label, n in sorted(s.findings.items()):
            print(f"    {n:5d} x {label}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="per format (default 60)")
    ap.add_argument("--format", default="all",
                    choices=("all", "safetensors", "index", "gguf", "apr", "npy", "npz"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", default="auto", choices=("auto", "atheris", "builtin"))
    ap.add_argument("--findings", default=os.path.join(tempfile.gettempdir(), "q4apr-fuzz-findings"))
    args = ap.parse_args(argv)
    try:
        import atheris  # noqa: F401
        have_atheris = True
    except ImportError:
        have_atheris = False
    if args.engine == "atheris" and not have_atheris:
        ap.error("atheris is not installed (pip install atheris)")
    use_atheris = have_atheris and args.engine != "builtin"
    load(use_atheris)
    formats = hostile.FORMATS if args.format == "all" else (args.format,)
    if use_atheris and len(formats) > 1:
        ap.error("atheris fuzzes one format per process: give --format")
    tmp = tempfile.mkdtemp(prefix="q4seeds-")
    try:
        seeds = hostile.seeds(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"engine: {'atheris' if use_atheris else 'builtin'}; {args.seconds:g} s per format",
          flush=True)
    if use_atheris:
        atheris_run(formats[0], seeds[formats[0]], args.seconds, args.findings)
        return 0
    rng = random.Random(args.seed)
    results = []
    for fmt in formats:
        stats = builtin_loop(fmt, seeds[fmt], args.seconds, rng, args.findings)
        print(stats.line(), flush=True)
        results.append(stats)
    _summary(results)
    return 1 if any(s.findings for s in results) else 0


if __name__ == "__main__":
    sys.exit(main())
