"""``slopekp video`` and ``slopekp video score`` on SynthBirds videos and hand-made DAVIS folders: every box source,
multi-object sequences, objects that leave and come back, bad input (issue 12)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from slopekp.cli import main
from slopekp.data.video import save_label_png


@pytest.fixture(scope="module")
def synth_videos(tmp_path_factory):
    """Two small SynthBirds videos (DAVIS layout, both in the train list here)."""
    from slopekp.data.synth.video import VideoSynthSettings
    from slopekp.data.synth.video_writer import generate_synth_videos

    root = tmp_path_factory.mktemp("videos")
    s = VideoSynthSettings(height=96, min_frames=6, max_frames=8, max_birds=2, val_fraction=0.0)
    return generate_synth_videos(root / "sv", 2, seed=4, layout="davis", settings=s, progress=False)


def _davis(root, labels: list[np.ndarray], name: str = "hand") -> None:
    """A DAVIS folder with one sequence whose annotations are ``labels`` (frames: grey with the objects lighter)."""
    img_dir = root / "DAVIS" / "JPEGImages" / "480p" / name
    ann_dir = root / "DAVIS" / "Annotations" / "480p" / name
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t, lab in enumerate(labels):
        frame = np.full((*lab.shape, 3), 90, np.uint8)
        frame[lab > 0] = 200
        Image.fromarray(frame).save(img_dir / f"{t:05d}.jpg")
        save_label_png(ann_dir / f"{t:05d}.png", lab)
    sets = root / "DAVIS" / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "val.txt").write_text(f"{name}\n")


def _hand_labels() -> list[np.ndarray]:
    """Four 48x64 frames: object 1 throughout, object 2 absent in frames 1 and 2 (it leaves and comes back), void
    in frame 3."""
    out = []
    for t in range(4):
        lab = np.zeros((48, 64), np.uint8)
        lab[10:30, 5 + 2 * t : 30 + 2 * t] = 1
        if t in (0, 3):
            lab[20:40, 40:60] = 2
        if t == 3:
            lab[0:4, :] = 255
        out.append(lab)
    return out


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr()


@pytest.mark.parametrize("boxes", ["gt", "tracker", "tracker:kcf", "masks"])
def test_video_runs_with_each_box_source_and_agrees_with_video_score(tiny_model, synth_videos, tmp_path, capsys,
                                                                      boxes):  # fmt: skip
    spec = f"masks:{synth_videos / 'DAVIS' / 'Annotations' / '480p'}" if boxes == "masks" else boxes
    out = tmp_path / "out"
    code, cap = _run(["video", "--checkpoint", str(tiny_model.checkpoint), "--data", str(synth_videos), "--split",
                      "train", "--boxes", spec, "--out", str(out), "--quiet"], capsys)  # fmt: skip
    assert code == 0, cap.err
    res = json.loads((out / "results.json").read_text())
    names = (synth_videos / "DAVIS" / "ImageSets" / "2017" / "train.txt").read_text().split()
    assert res["sequences"] == names and res["boxes"] == spec and res["head"] == "keypoints"
    for name in names:
        frames = sorted((synth_videos / "DAVIS" / "JPEGImages" / "480p" / name).glob("*.jpg"))
        masks = sorted((out / "masks" / name).glob("*.png"))
        assert [m.stem for m in masks] == [f.stem for f in frames]
        assert Image.open(masks[0]).mode == "P" and Image.open(masks[0]).size == Image.open(frames[0]).size
        assert (out / "videos" / f"{name}.mp4").stat().st_size > 1000
    for row in res["objects"]:
        s = row["all"]
        assert 0 <= s["mean"] <= 1 and 0 <= s["recall"] <= 1 and -1 <= s["decay"] <= 1
    assert res["fps"] > 0 and "frames per second" in cap.out
    md = (out / "results.md").read_text()
    assert "| paper, Table 2 (keypoints" in md and "| all |" in md and "| drop-first-last |" in md
    # the written masks, scored by `video score`, give the numbers the online run reported
    code, cap = _run(["video", "score", "--gt", str(synth_videos), "--split", "train", "--pred", str(out / "masks"),
                      "--out", str(tmp_path / "score")], capsys)  # fmt: skip
    assert code == 0, cap.err
    scored = json.loads((tmp_path / "score" / "results.json").read_text())
    for conv in ("all", "drop-first-last"):
        for k in ("mean", "recall", "decay"):
            assert scored["overall"][conv][k] == pytest.approx(res["overall"][conv][k], abs=1e-12)
            assert scored["overall_F"][conv][k] == pytest.approx(res["overall_F"][conv][k], abs=1e-12)
        assert scored["overall_J&F"][conv] == pytest.approx(res["overall_J&F"][conv], abs=1e-12)
        assert 0 <= res["overall_F"][conv]["mean"] <= 1


def test_score_of_the_ground_truth_itself_is_perfect(synth_videos, tmp_path, capsys):
    gt = synth_videos / "DAVIS" / "Annotations" / "480p"
    code, cap = _run(["video", "score", "--gt", str(synth_videos), "--split", "train", "--pred", str(gt), "--out",
                      str(tmp_path), "--drop-first-last"], capsys)  # fmt: skip
    assert code == 0, cap.err
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["overall"]["all"]["mean"] == 1.0 and res["overall"]["all"]["recall"] == 1.0
    assert res["overall"]["all"]["decay"] == 0.0
    for conv in ("all", "drop-first-last"):
        assert res["overall_F"][conv]["mean"] == 1.0 and res["overall_F"][conv]["decay"] == 0.0
        assert res["overall_J&F"][conv] == 1.0
    assert "overall (drop-first-last)" in cap.out


def test_objects_that_leave_and_come_back_get_empty_masks(tiny_model, tmp_path, capsys):
    _davis(tmp_path, _hand_labels())
    out = tmp_path / "out"
    code, cap = _run(["video", "--checkpoint", str(tiny_model.checkpoint), "--data", str(tmp_path), "--boxes", "gt",
                      "--out", str(out), "--quiet", "--no-video"], capsys)  # fmt: skip
    assert code == 0, cap.err
    labels = [np.array(Image.open(out / "masks" / "hand" / f"{t:05d}.png")) for t in range(4)]
    for t in (1, 2):
        assert not (labels[t] == 2).any()  # absent object: an empty mask, not a crash
    assert not (out / "videos").exists()
    res = json.loads((out / "results.json").read_text())
    obj2 = next(r for r in res["objects"] if r["object"] == 2)
    assert obj2["frames_with_box"] == 2
    # frames 1 and 2: both empty -> J = 1 each, so the mean is at least 0.5
    assert obj2["all"]["mean"] >= 0.5 and obj2["all"]["recall"] >= 0.5


def test_smoothing_runs_and_moves_partway(tiny_model, synth_videos, tmp_path, capsys):
    from slopekp.video.online import Smoother

    sm = Smoother(0.75)
    q0 = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    half = math.radians(40) / 2
    q1 = torch.tensor([math.cos(half), 0.0, math.sin(half), 0.0], dtype=torch.float64)
    cam0 = torch.cat([torch.tensor([100.0, 10.0, 20.0], dtype=torch.float64), q0])
    cam1 = torch.cat([torch.tensor([200.0, 30.0, 20.0], dtype=torch.float64), q1])
    v = torch.zeros(5, 3, dtype=torch.float64)
    assert torch.equal(sm(1, cam0, v)[0], cam0)  # the first frame passes through
    got, gv = sm(1, cam1, v + 4)
    assert got[0] == pytest.approx(0.25 * 200 + 0.75 * 100) and got[1] == pytest.approx(15.0)
    angle = 2 * math.degrees(math.acos(min(1.0, abs(float(got[3:] @ q0)))))
    assert angle == pytest.approx(10.0, abs=1e-6)  # a quarter of the 40 degree turn
    assert torch.allclose(gv, torch.ones_like(gv))
    sm.reset(1)
    assert torch.equal(sm(1, cam1, v)[0], cam1)  # after a gap it starts afresh
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Smoother(1.0)
    out = tmp_path / "out"
    code, cap = _run(["video", "--checkpoint", str(tiny_model.checkpoint), "--data", str(synth_videos), "--split",
                      "train", "--boxes", "gt", "--smooth", "0.5", "--out", str(out), "--quiet", "--no-video"],
                     capsys)  # fmt: skip
    assert code == 0, cap.err
    assert json.loads((out / "results.json").read_text())["smoothing"] == 0.5


def test_bad_input_is_named(tiny_model, synth_videos, tmp_path, capsys):
    ck = str(tiny_model.checkpoint)
    base = ["video", "--checkpoint", ck, "--data", str(synth_videos), "--split", "train", "--quiet", "--no-video"]
    name = (synth_videos / "DAVIS" / "ImageSets" / "2017" / "train.txt").read_text().split()[0]
    # a mask folder with a missing frame
    masks = tmp_path / "masks"
    shutil.copytree(synth_videos / "DAVIS" / "Annotations" / "480p", masks)
    (masks / name / "00002.png").unlink()
    code, cap = _run([*base, "--boxes", f"masks:{masks}", "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and f"{masks / name}: 1 of" in cap.err and "00002.png" in cap.err
    # a palette PNG with an id the sequence does not have
    shutil.rmtree(masks)
    shutil.copytree(synth_videos / "DAVIS" / "Annotations" / "480p", masks)
    lab = np.array(Image.open(masks / name / "00001.png"))
    lab[0, 0] = 77
    save_label_png(masks / name / "00001.png", lab)
    code, cap = _run([*base, "--boxes", f"masks:{masks}", "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "00001.png: unknown object id(s) [77]" in cap.err
    code, cap = _run(["video", "score", "--gt", str(synth_videos), "--split", "train", "--pred", str(masks)], capsys)
    assert code == 2 and "unknown object id(s) [77]" in cap.err
    # an RGB PNG is not a mask of ids
    Image.fromarray(np.zeros((*lab.shape, 3), np.uint8)).save(masks / name / "00001.png")
    code, cap = _run([*base, "--boxes", f"masks:{masks}", "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "palette ('P' mode)" in cap.err
    # a video shorter than 2 frames
    short = tmp_path / "short"
    _davis(short, _hand_labels()[:1], "one")
    code, cap = _run(["video", "--checkpoint", ck, "--data", str(short), "--boxes", "gt", "--out",
                      str(tmp_path / "o4"), "--quiet"], capsys)  # fmt: skip
    assert code == 2 and "at least 2 frames, got 1" in cap.err
    # a bad box source, an unknown sequence, a folder that is no data set, missing arguments
    for args, msg in (([*base, "--boxes", "yolo", "--out", str(tmp_path / "o5")], "--boxes 'yolo'"),
                      ([*base, "--sequences", "nope", "--out", str(tmp_path / "o6")], "unknown sequence(s) ['nope']"),
                      (["video", "--checkpoint", ck, "--data", str(tmp_path / "o7"), "--out", str(tmp_path)],
                       "not a folder"),
                      (["video", "--data", str(synth_videos)], "needs --checkpoint, --out")):  # fmt: skip
        code, cap = _run(args, capsys)
        assert code == 2 and msg in cap.err, (msg, cap.err)


def test_the_tracker_follows_the_birds(synth_videos):
    from slopekp.data.video import DavisDataset
    from slopekp.video.boxes import label_boxes, open_boxes

    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        inter = ix * iy
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    ds = DavisDataset(synth_videos, split="train")
    scores = []
    for name in ds.sequences:
        seq = ds[name]
        for kind in ("tracker", "tracker:kcf"):
            track = open_boxes(kind, seq)
            for t in range(len(seq)):
                frame = (seq.load_image(t).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
                got = track.step(t, frame)
                gt = label_boxes(seq.load_labels(t), seq.object_ids)
                assert set(got) == set(seq.object_ids)
                for i, box in got.items():
                    h, w = frame.shape[:2]
                    if box is not None:
                        assert 0 <= box[0] <= box[2] <= w - 1 and 0 <= box[1] <= box[3] <= h - 1
                    if box is not None and gt[i] is not None:
                        scores.append(iou(box, gt[i]))
    assert len(scores) > 10 and np.mean(scores) > 0.4, np.mean(scores)


def test_youtubevos_layout_train_and_first_frame_only_valid(tiny_model, tmp_path, capsys):
    from slopekp.data.synth.video import VideoSynthSettings
    from slopekp.data.synth.video_writer import generate_synth_videos

    s = VideoSynthSettings(height=64, min_frames=4, max_frames=5, max_birds=3, val_fraction=0.5)
    root = generate_synth_videos(tmp_path / "yt", 2, seed=2, layout="youtubevos", settings=s, progress=False)
    # the generator's own folder (its YouTube-VOS data sit in youtubevos/) is found as it is
    base = ["video", "--checkpoint", str(tiny_model.checkpoint), "--data", str(root), "--quiet", "--no-video"]
    code, cap = _run([*base, "--boxes", "gt", "--out", str(tmp_path / "train")], capsys)  # train: the default split
    assert code == 0, cap.err
    res = json.loads((tmp_path / "train" / "results.json").read_text())
    assert res["not_scored"] == [] and all(r["scored"] for r in res["objects"])
    # valid holds first-frame masks only (a frame's PNG has only the objects that start there): the tracker starts
    # from them, and nothing is scored rather than scoring objects against PNGs that leave them out
    code, cap = _run([*base, "--split", "valid", "--boxes", "tracker", "--out", str(tmp_path / "valid")], capsys)
    assert code == 0, cap.err
    res = json.loads((tmp_path / "valid" / "results.json").read_text())
    assert res["not_scored"] and res["overall"]["all"] is None and "not scored" in cap.out
    assert "Not scored:" in (tmp_path / "valid" / "results.md").read_text()
    assert len(list((tmp_path / "valid" / "masks").iterdir())) == 1  # the masks are written all the same
    code, cap = _run([*base, "--split", "valid", "--boxes", "gt", "--out", str(tmp_path / "v2")], capsys)
    assert code == 2 and "--boxes gt needs an annotation for every frame" in cap.err


def test_official_convention_counts_void_as_background(tmp_path, capsys):
    labels = _hand_labels()
    labels[1][0:4, :] = 255  # void in an inner frame (frame 3's void is dropped with the last frame)
    _davis(tmp_path / "gt", labels)
    pred = tmp_path / "pred" / "hand"
    pred.mkdir(parents=True)
    for t, lab in enumerate(labels):
        p = lab.copy()
        p[p == 255] = 1  # object 1 also claims the void pixels
        save_label_png(pred / f"{t:05d}.png", p)
    code, cap = _run(["video", "score", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")], capsys)
    assert code == 0, cap.err
    res = json.loads((tmp_path / "pred" / "results.json").read_text())
    obj1 = next(r for r in res["objects"] if r["object"] == 1)
    assert obj1["all"]["mean"] == 1.0  # void excluded: a perfect match
    # void as background: frame 1 of object 1 is 20*25 / (20*25 + 4*64) (its box rows 10..29 miss the void rows)
    inner = [20 * 25 / (20 * 25 + 4 * 64), 1.0]  # frames 1 and 2 after dropping the first and the last
    assert obj1["drop-first-last"]["mean"] == pytest.approx(np.mean(inner))


def test_a_failed_run_leaves_the_earlier_outputs_whole(tiny_model, synth_videos, tmp_path, capsys, monkeypatch):
    import slopekp.video.online as online

    name = (synth_videos / "DAVIS" / "ImageSets" / "2017" / "train.txt").read_text().split()[0]
    out = tmp_path / "out"
    base = ["video", "--checkpoint", str(tiny_model.checkpoint), "--data", str(synth_videos), "--split", "train",
            "--sequences", name, "--out", str(out), "--quiet"]  # fmt: skip
    assert _run([*base, "--boxes", "gt"], capsys)[0] == 0
    video = (out / "videos" / f"{name}.mp4").read_bytes()
    masks = {p.name: p.read_bytes() for p in (out / "masks" / name).iterdir()}
    results = (out / "results.json").read_bytes()

    def whole():
        assert (out / "videos" / f"{name}.mp4").read_bytes() == video
        assert {p.name: p.read_bytes() for p in (out / "masks" / name).iterdir()} == masks
        assert (out / "results.json").read_bytes() == results
        assert not [p for p in out.rglob("*") if ".part" in p.name]

    # a mask folder whose frame 3 holds an unknown id fails part-way in a new folder ...
    bad = tmp_path / "bad"
    shutil.copytree(synth_videos / "DAVIS" / "Annotations" / "480p", bad)
    lab = np.array(Image.open(bad / name / "00003.png"))
    lab[0, 0] = 99
    save_label_png(bad / name / "00003.png", lab)
    fresh = [*base[:-3], "--out", str(tmp_path / "fresh"), "--quiet"]
    code, cap = _run([*fresh, "--boxes", f"masks:{bad}"], capsys)
    assert code == 2 and "unknown object id(s) [99]" in cap.err
    assert not (tmp_path / "fresh" / "results.json").exists()
    # ... and is refused before any work in the folder of a run with other boxes
    code, cap = _run([*base, "--boxes", f"masks:{bad}"], capsys)
    assert code == 2 and "holds a run of `slopekp video`" in cap.err and "video.boxes" in cap.err
    whole()
    # a run with the same settings that fails part-way (here: scoring frame 3 raises) leaves the earlier run whole
    real, calls = online.score_frame, []

    def failing(gt, labels):
        calls.append(1)
        if len(calls) == 4:
            raise ValueError("scoring failed on purpose")
        return real(gt, labels)

    monkeypatch.setattr(online, "score_frame", failing)
    code, cap = _run([*base, "--boxes", "gt"], capsys)
    assert code == 2 and "scoring failed on purpose" in cap.err and len(calls) == 4
    whole()
    # and the predicted masks of a run are never read from the folder it writes them to
    code, cap = _run([*base, "--boxes", f"masks:{out / 'masks'}"], capsys)
    assert code == 2 and "would be overwritten" in cap.err
