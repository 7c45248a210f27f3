"""``benchmarks/texture_baselines.py`` at smoke size: each bird's own flat colour is never worse than one colour
for all, and both are the evaluation's masked L1 of a flat render."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from slopekp.data.synth.writer import generate_synthbirds

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "texture_baselines.py"


def test_texture_baselines_smoke(tmp_path):
    data = generate_synthbirds(tmp_path / "sb", 1, 6, size=64, seed=3, progress=False)
    res = subprocess.run([sys.executable, str(SCRIPT), "--data", str(data)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    own, one = (json.loads(line) for line in res.stdout.splitlines())
    assert (own["case"], one["case"]) == ("own_colour", "one_colour") and own["images"] == 6
    assert 0.0 < own["l1"] <= one["l1"] + 1e-3 < 1.0
    res = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "absent")], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode != 0 and "absent" in res.stderr
