"""Starting the page: the first boot stores the runtime snapshot (keyed by the standard
library's zip), later boots start from it and the conversion workers from the first
worker's, each worker unpacks numpy's wheel itself (loadPackage if it cannot), a broken snapshot
only costs a fresh start, and a worker that cannot load says so (the early worker that
static/boot.js starts is adopted with whatever it said before app.js listened)."""

import pytest

from test_app import download, native, open_app, wait_booted, wait_state
from test_pool import set_workers, site_with, wait_pool_ready

# runtime.js's IndexedDB store of runtime snapshots, opened as it opens it
OPEN_DB = """
  const db = await new Promise((ok, no) => {
    const r = indexedDB.open("q4apr-runtime", 1);
    r.onupgradeneeded = () => r.result.createObjectStore("snapshots");
    r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error);
  });"""

SNAPSHOT_KEYS = """async () => {""" + OPEN_DB + """
  const keys = await new Promise((ok, no) => {
    const r = db.transaction("snapshots").objectStore("snapshots").getAllKeys();
    r.onsuccess = () => ok(r.result); r.onerror = () => no(r.error);
  });
  db.close();
  return keys;
}"""

PUT_SNAPSHOT = """async ([key, size]) => {""" + OPEN_DB + """
  await new Promise((ok, no) => {
    const tx = db.transaction("snapshots", "readwrite");
    tx.objectStore("snapshots").put(new Uint8Array(size).fill(7), key);
    tx.oncomplete = ok; tx.onerror = () => no(tx.error);
  });
  db.close();
}"""


def worker_facts(page, fact):
    """A fact of each Python worker (a JS expression): {"main": ..., "converters": [...]}."""
    kinds = {"main": None, "converters": []}
    for w in page.workers:
        value = w.evaluate(f"{fact} || null")
        if value is None:
            continue
        if w.evaluate("!!self.q4aprPoolReady"):
            kinds["main"] = value
        else:
            kinds["converters"].append(value)
    return kinds


def booted_from(page):
    """How each Python worker started: "fresh" or "snapshot"."""
    return worker_facts(page, "self.q4aprBootedFrom")


def snapshot_key(dist_dir):
    """runtime.js's SNAPSHOT_KEY, as built (keyed by the stdlib zip's hash)."""
    import re
    stdlib = re.search(r"`pyodide-\$\{pyodideVersion\}-stdlib-([0-9a-f]{16})`",
                       (dist_dir / "static" / "runtime.js").read_text()).group(1)
    return f"pyodide-0.27.7-stdlib-{stdlib}"


def wait_snapshot_stored(page, key, timeout_ms=30_000):
    for _ in range(timeout_ms // 250):
        if page.evaluate(SNAPSHOT_KEYS) == [key]:
            return
        page.wait_for_timeout(250)
    raise AssertionError(f"no snapshot stored under {key}: {page.evaluate(SNAPSHOT_KEYS)}")


def test_the_first_boot_stores_the_snapshot_and_later_boots_start_from_it(page, site_url, dist_dir):
    key = snapshot_key(dist_dir)
    open_app(page, site_url)
    assert booted_from(page)["main"] == "fresh"
    wait_snapshot_stored(page, key)
    page.reload()
    wait_booted(page)
    # the conversion workers get the snapshot from the first worker, not from IndexedDB
    page.evaluate(PUT_SNAPSHOT, [key, 4096])
    set_workers(page, 3)
    wait_pool_ready(page, 3)
    assert booted_from(page) == {"main": "snapshot", "converters": ["snapshot", "snapshot"]}
    # numpy unpacked from its wheel (static/wheel.js), not by loadPackage; its files handed on
    assert worker_facts(page, "self.q4aprNumpyFrom") == {"main": "wheel", "converters": ["kit", "kit"]}


@pytest.mark.parametrize("size", [4096, 21 << 20])   # too short to be one; refused by Pyodide
def test_a_broken_snapshot_costs_a_fresh_start_and_is_replaced(page, site_url, dist_dir, size):
    key = snapshot_key(dist_dir)
    page.goto(site_url)   # the origin's IndexedDB, before the app has stored anything
    page.evaluate(PUT_SNAPSHOT, [key, size])
    page.evaluate(PUT_SNAPSHOT, ["pyodide-0.27.7-v1", 64])   # an older build's
    page.reload()
    wait_booted(page)
    assert booted_from(page)["main"] == "fresh"
    wait_snapshot_stored(page, key)   # a good one, the older build's gone
    page.reload()
    wait_booted(page)
    assert booted_from(page)["main"] == "snapshot"


def test_numpy_comes_by_loadpackage_when_its_wheel_cannot_be_had_first(page, dist_dir):
    """The worker's own fetch of numpy's wheel fails (HTTP 503 once): it starts all the
    same, numpy loaded by Pyodide's loadPackage, and converts as the CLI does."""
    import serve
    failed = []

    class Handler(serve.Handler):
        def do_GET(self):
            # the first request for the wheel that is not the service worker's precache
            # (cache: "no-cache" sends Cache-Control)
            if self.path.endswith(".whl") and not failed and "Cache-Control" not in self.headers:
                failed.append(self.path)
                self.send_error(503)
                return
            super().do_GET()
    server, root = serve.start_server(str(dist_dir), handler=Handler)
    try:
        open_app(page, root)
        assert failed and worker_facts(page, "self.q4aprNumpyFrom")["main"] == "loadPackage"
        page.click("#sample-btn")
        assert wait_state(page, "done", "error") == "done", page.text_content("#error-panel")
        assert download(page)[1] == native(dist_dir / "static" / "sample" / "model.safetensors")[0]
    finally:
        server.shutdown()


@pytest.mark.parametrize("app_late", [False, True])
def test_a_worker_that_cannot_load_says_so_and_offers_to_try_again(page, dist_dir, tmp_path, app_late):
    """app_late: app.js arrives after the worker has failed (boot.js started it): app.js
    learns of the failure from the events boot.js kept."""
    import time
    import serve
    site = site_with(dist_dir, tmp_path, "worker.js", "this is not JavaScript (\n")

    class Handler(serve.Handler):
        def do_GET(self):
            if app_late and self.path.endswith("/static/app.js"):
                time.sleep(2)
            super().do_GET()
    server, root = serve.start_server(str(site), handler=Handler)
    try:
        page.goto(root)
        page.wait_for_selector('body[data-boot="failed"]', state="attached", timeout=30_000)
        assert page.is_visible("#boot-retry")
        assert "could not start" in page.text_content("#error-panel").lower()
    finally:
        server.shutdown()
