"""Seconds spent in named parts of a run, for the benchmarks (bench/e2e_native.py --profile
natively, bench/e2e_browser.py --profile in the page's worker): functions are wrapped in
timers for the length of a `with`, nothing is timed otherwise."""

import contextlib
import time


class Timers(dict):
    """{part: seconds}, added up over every call (and every thread) timed."""

    def wrap(self, key, fn):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self[key] = self.get(key, 0.0) + time.perf_counter() - t0
        return timed

    async def awaited(self, key, awaitable):
        t0 = time.perf_counter()
        try:
            return await awaitable
        finally:
            self[key] = self.get(key, 0.0) + time.perf_counter() - t0

    @contextlib.contextmanager
    def patched(self, *targets):
        """Time (owner, attribute, part) functions while inside; put them back after."""
        saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in targets]
        for owner, attr, key in targets:
            setattr(owner, attr, self.wrap(key, getattr(owner, attr)))
        try:
            yield self
        finally:
            for owner, attr, fn in saved:
                setattr(owner, attr, fn)
