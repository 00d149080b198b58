"""The page against the malformed-input corpus: one worker, every corpus file in a row.

Each file must end in a readable error (or a result, for the few cases that are
merely odd), the worker must keep going, no partial file may be offered, and a
valid model must still quantize to the native bytes at the end.
"""

import re

import hostile
from test_app import (choose, download, native, open_app, quantize, sample_path,  # noqa: F401
                      set_options, wait_state)


def corpus_cases():
    from test_malformed import CORPUS
    for fmt, cases in CORPUS.items():
        for case in cases:
            if all(isinstance(data, bytes) for data in case.files.values()):
                yield f"{fmt}/{case.id}", case


def test_worker_survives_every_corpus_file_in_a_row(page, site_url, tmp_path, sample_path):
    open_app(page, site_url)
    set_options(page, chunk_bytes=256)
    outcomes = {"error": 0, "done": 0}
    for n, (case_id, case) in enumerate(corpus_cases()):
        folder = tmp_path / f"c{n}"
        folder.mkdir()
        paths = hostile.write_set(folder, case.files)
        choose(page, *paths)
        page.evaluate("document.body.dataset.state = 'next'")   # so the last case's state can't match
        page.click("#quantize-btn")
        state = wait_state(page, "error", "done", timeout=30_000)
        outcomes[state] += 1
        if case.bad:
            assert state == "error", f"{case_id}: the page accepted a file that breaks a rule"
        if state == "error":
            message = page.text_content("#error-title") + " " + page.text_content("#error-message")
            assert "internal error" not in message and "Traceback" not in message, (case_id, message)
            assert any(name in message for name in case.files), (case_id, message)
            if case.match:
                assert re.search(case.match, message, re.I), (case_id, message)
            assert page.get_attribute("#download-link", "href") is None, case_id
        assert page.get_attribute("body", "data-boot") == "ready", f"{case_id}: the worker died"
    assert outcomes["error"] >= 300, outcomes

    set_options(page, chunk_bytes=4096)
    quantize(page, sample_path)
    _, data = download(page)
    assert data == native(sample_path, chunk_bytes=4096)[0]
