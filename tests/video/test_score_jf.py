"""``slopekp video score`` reports J, F and J&F per object and overall: a hand-made DAVIS folder whose values are
computed here from the brute-force references (video_reference.py) and the definitions of Mean, Recall and Decay."""

from __future__ import annotations

import json

import numpy as np
import pytest
from video_reference import reference_f, reference_j, write_davis, write_masks

from slopekp.cli import main

H, W, T = 75, 130, 5  # tolerance ceil(0.008 * 150.1) = 2 pixels


def _rect(r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def _case():
    """Ground truth and predictions of objects 1 and 2 over 5 frames, and the void of each frame."""
    gt1 = [_rect(10, 40, 10 + 4 * t, 50 + 4 * t) for t in range(T)]
    gt2 = [_rect(46, 70, 80, 120) if t != 3 else np.zeros((H, W), bool) for t in range(T)]  # absent in frame 3
    void = [np.zeros((H, W), bool) for _ in range(T)]
    for t in (1, 2):
        void[t][40:46, :] = True  # a void band between the objects in frames 1 and 2
    p1 = [gt1[0].copy(),
          gt1[1] | _rect(40, 46, 14, 54),  # spills into the void band only
          np.roll(gt1[2], 3, axis=1),  # 3 pixels off: beyond the tolerance on its sides
          np.roll(gt1[3], 1, axis=0) & ~_rect(20, 30, 40, 70),  # 1 pixel off, with a notch
          np.zeros((H, W), bool)]  # lost  # fmt: skip
    p1[2] |= _rect(40, 46, 60, 70)  # and a spill into the void band in frame 2 as well
    p2 = [gt2[0].copy(),
          np.roll(gt2[1], 6, axis=1),
          gt2[2] | _rect(40, 46, 100, 125),  # spills into the void band
          np.zeros((H, W), bool),  # absent in both
          _rect(5, 15, 100, 120)]  # somewhere else  # fmt: skip
    return {1: (gt1, p1), 2: (gt2, p2)}, void


def _labels(masks: dict[int, list[np.ndarray]]) -> list[np.ndarray]:
    out = []
    for t in range(T):
        lab = np.zeros((H, W), np.uint8)
        for i, m in masks.items():
            assert not (lab[m[t]] > 0).any()  # the objects never overlap here
            lab[m[t]] = i
        out.append(lab)
    return out


def _stats(v: list[float]) -> dict:
    """Mean, Recall (> 0.5) and Decay by hand: for 5 frames the bins are frames (0, 1) and (3, 4); for 3 frames
    (0, 1) and (2,) (linspace(1, 3, 5) = 1, 1.5, 2, 2.5, 3 rounds half up to 1, 2, 2, 3, 3)."""
    v = np.asarray(v, float)
    if len(v) == 5:
        decay = v[0:2].mean() - v[3:5].mean()
    else:
        assert len(v) == 3
        decay = v[0:2].mean() - v[2]
    return {"mean": v.mean(), "recall": float((v > 0.5).mean()), "decay": decay}


def test_video_score_reports_j_f_and_jf_per_object_and_overall(tmp_path, capsys):
    objs, void = _case()
    gt_labels = _labels({i: g for i, (g, _) in objs.items()})
    for t in range(T):
        gt_labels[t][void[t] & (gt_labels[t] == 0)] = 255
    # the void band holds no object of the ground truth
    assert all(((gt_labels[t] == 255) == void[t]).all() for t in range(T))
    write_davis(tmp_path / "gt", gt_labels)
    write_masks(tmp_path / "pred", _labels({i: p for i, (_, p) in objs.items()}))
    out = tmp_path / "scores"
    code = main(["video", "score", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    res = json.loads((out / "results.json").read_text())

    expected = {}
    for i, (g, p) in objs.items():
        j_all = [reference_j(g[t], p[t], void[t]) for t in range(T)]  # void excluded
        f_all = [reference_f(g[t], p[t], void[t]) for t in range(T)]
        j_off = [reference_j(g[t], p[t]) for t in range(1, T - 1)]  # official: void as background, ends dropped
        f_off = [reference_f(g[t], p[t]) for t in range(1, T - 1)]
        expected[i] = {"all": (_stats(j_all), _stats(f_all)), "drop-first-last": (_stats(j_off), _stats(f_off))}
    # the case is what it should be: F differs from J, void matters, and not everything is perfect or zero
    assert expected[1]["all"][1]["mean"] != pytest.approx(expected[1]["all"][0]["mean"], abs=1e-3)
    g1, p1 = objs[1]
    assert reference_f(g1[1], p1[1], void[1]) == 1.0 and reference_f(g1[1], p1[1]) < 0.9
    assert 0 < expected[2]["all"][1]["recall"] < 1

    rows = {r["object"]: r for r in res["objects"]}
    assert set(rows) == {1, 2}
    for i, conv in ((1, "all"), (2, "all"), (1, "drop-first-last"), (2, "drop-first-last")):
        ej, ef = expected[i][conv]
        row = rows[i]
        for k in ("mean", "recall", "decay"):
            assert row[conv][k] == pytest.approx(ej[k], abs=1e-4), (i, conv, "J", k)
            assert row["F"][conv][k] == pytest.approx(ef[k], abs=1e-4), (i, conv, "F", k)
        assert row["J&F"][conv] == pytest.approx((ej["mean"] + ef["mean"]) / 2, abs=1e-4)
        assert row["F"][conv]["frames"] == (T if conv == "all" else T - 2)
    for conv in ("all", "drop-first-last"):
        for k in ("mean", "recall", "decay"):
            assert res["overall"][conv][k] == pytest.approx(np.mean([expected[i][conv][0][k] for i in (1, 2)]),
                                                            abs=1e-4)  # fmt: skip
            assert res["overall_F"][conv][k] == pytest.approx(np.mean([expected[i][conv][1][k] for i in (1, 2)]),
                                                              abs=1e-4)  # fmt: skip
        jf = np.mean([expected[i][conv][0]["mean"] + expected[i][conv][1]["mean"] for i in (1, 2)]) / 2
        assert res["overall_J&F"][conv] == pytest.approx(jf, abs=1e-4)
        assert res["overall_F"][conv]["objects"] == 2

    # the printed table and results.md carry them too
    header = cap.out.splitlines()[0].split()
    assert header == ["sequence", "object", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay",
                      "J&F-Mean"]  # fmt: skip
    line = next(s for s in cap.out.splitlines() if s.startswith("hand") and s.split()[1] == "1").split()
    ej, ef = expected[1]["all"]
    want = [ej["mean"], ej["recall"], ej["decay"], ef["mean"], ef["recall"], ef["decay"], (ej["mean"] + ef["mean"]) / 2]
    assert [float(x) for x in line[2:]] == pytest.approx(want, abs=6e-4)
    overall = next(s for s in cap.out.splitlines() if s.startswith("overall (all)")).split()
    assert float(overall[-1]) == pytest.approx(res["overall_J&F"]["all"], abs=6e-4)
    md = (out / "results.md").read_text()
    assert "| frames | objects | J-Mean | J-Recall | J-Decay | F-Mean | F-Recall | F-Decay | J&F-Mean |" in md
    assert f"| all | 2 | {res['overall']['all']['mean']:.3f} |" in md
    assert f"| {res['overall_F']['all']['decay']:+.3f} | {res['overall_J&F']['all']:.3f} |" in md
    # --drop-first-last prints the official convention
    code = main(["video", "score", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out",
                 str(tmp_path / "s2"), "--drop-first-last"])  # fmt: skip
    cap = capsys.readouterr()
    assert code == 0, cap.err
    overall = next(s for s in cap.out.splitlines() if s.startswith("overall (drop-first-last)")).split()
    assert float(overall[-1]) == pytest.approx(res["overall_J&F"]["drop-first-last"], abs=6e-4)
    assert float(overall[-4]) == pytest.approx(res["overall_F"]["drop-first-last"]["mean"], abs=6e-4)
