"""``benchmarks/shape_gallery.py`` at smoke size: one JSON line per checkpoint and photo, the figure written once
(an existing ``--out`` is refused), and a malformed ``--checkpoint`` named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shape_gallery.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300)


def test_shape_gallery_smoke(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    photos = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / name)
        photos.append(tmp_path / name)
    out = tmp_path / "gallery.png"
    ck = tiny_model.checkpoint
    res = _run("--checkpoint", f"first={ck}", "--checkpoint", f"again={ck}", "--out", out, "--size", "48", *photos)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["case"], r["photo"]) for r in lines] == [
        ("first", "a.png"), ("first", "b.png"), ("again", "a.png"), ("again", "b.png")]
    assert all(-1.0 <= r["normal_consistency"] <= 1.0 and r["device"] == "cpu" for r in lines)
    assert [r["normal_consistency"] for r in lines[:2]] == [r["normal_consistency"] for r in lines[2:]]  # same model
    with Image.open(out) as fig:
        assert fig.format == "PNG" and fig.width > 6 * 48 and fig.height > 2 * 48
    before = out.read_bytes()
    again = _run("--checkpoint", f"first={ck}", "--out", out, photos[0])
    assert again.returncode != 0 and "exists" in again.stderr and out.read_bytes() == before
    bad = _run("--checkpoint", str(ck), "--out", tmp_path / "other.png", photos[0])
    assert bad.returncode != 0 and "expected LABEL=PATH" in bad.stderr
    missing = _run("--checkpoint", f"first={ck}", "--out", tmp_path / "other.png", tmp_path / "absent.png")
    assert missing.returncode == 2 and "absent.png: image file not found" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "other.png").exists()
