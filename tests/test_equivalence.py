"""The engine reproduces the reference run recorded before it was restructured, bit for bit."""

from __future__ import annotations

import json
import math

import pytest

from .golden_run import GOLDEN, machine, run_golden


def test_reference_run_is_reproduced_bit_for_bit(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    result = run_golden(tmp_path)
    assert [list(row) for row in result["metrics"]] == [list(row) for row in golden["metrics"]]
    if machine() == golden["machine"]:
        assert result["metrics"] == golden["metrics"]
        assert result["weights_sha256"] == golden["weights_sha256"]
        return
    # Another CPU or torch rounds differently: the same run, to float tolerance.
    for ours, theirs in zip(result["metrics"], golden["metrics"], strict=True):
        for key, value in theirs.items():
            a, b = float(ours[key] or "nan"), float(value or "nan")
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=0.05,
                                                                            abs=1e-3), key
