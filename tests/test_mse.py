"""The quality figures the README quotes, recorded as tests."""

import numpy as np
import pytest

from helpers import run


def test_apr_q4_mse_and_ratio_on_uniform_weights(tmp_path):
    w = np.random.default_rng(0).uniform(-1, 1, (256, 256)).astype(np.float32)  # 65,536 weights
    p = str(tmp_path / "u.npy")
    np.save(p, w)
    _, report = run([p])
    t = report["tensors"][0]
    assert t["dtype_out"] == "APR_Q4"
    # recorded: MSE 0.0015489 (the spec: near 0.0015; the broken 2-byte-f32 scale gave 0.333)
    assert t["mse"] == pytest.approx(0.0015489, abs=2e-7), t["mse"]
    # half a step of the f32 scale, plus up to 7 × the f16 rounding of the scale
    assert t["max_abs_err"] <= 1 / 14 + 7 * (1 / 7) * 2.0 ** -11
    assert round(report["totals"]["ratio"], 2) == 7.11
