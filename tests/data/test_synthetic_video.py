"""SynthBirds videos read back through the DAVIS and YouTube-VOS readers, checked against the generator's
own record (``cameras/<seq>.npz``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from slopekp import cli
from slopekp.data.synth.video import VideoSynthSettings
from slopekp.data.synth.video_writer import generate_synth_videos, split_names, ytvos_frame_names
from slopekp.data.verify import verify_dataset
from slopekp.data.video import DavisDataset, YouTubeVOSDataset, voc_palette
from slopekp.geometry.camera import project_points
from slopekp.geometry.rotations import quat_geodesic_angle

SETTINGS = VideoSynthSettings(
    height=64,
    min_frames=7,
    max_frames=9,
    max_birds=3,
    p_leave_enter=1.0,
    p_occluder=1.0,
    bird_length=(0.35, 0.5),
)
N_SEQ = 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_video")
    generate_synth_videos(out, N_SEQ, seed=5, layout="both", settings=SETTINGS, progress=False)
    gt = {}
    for i in range(N_SEQ):
        with np.load(out / "cameras" / f"birds-{i:03d}.npz") as d:
            gt[f"birds-{i:03d}"] = {k: d[k] for k in d.files}
    return out, gt


def test_davis_layout_reads_back_with_the_right_objects(synth):
    out, gt = synth
    train, val = DavisDataset(out, "train"), DavisDataset(out, "val")
    assert train.sequences + val.sequences == tuple(gt)
    assert len(val) == 1  # round(3/3)
    for seq in (*train, *val):
        g = gt[seq.name]
        t_len = len(g["frame_names"])
        assert len(seq) == t_len and seq.frame_names == tuple(g["frame_names"])
        assert seq.frame_size() == (64, 114)  # 64·854/480 rounded
        # the official DAVIS count (max id of the first annotation) recovers every bird
        assert seq.object_ids == tuple(g["object_ids"].tolist())
        for t in range(t_len):
            fm = seq.load_masks(t)
            assert fm.present() == tuple(bool(v) for v in g["visible_px"][t] > 0)
            np.testing.assert_array_equal(fm.masks.sum(dim=(1, 2)).numpy(), g["visible_px"][t])
            assert not fm.void.any()
        assert np.all(g["visible_px"] <= g["area_px"])


def test_birds_leave_or_enter(synth):
    _, gt = synth
    for name, g in gt.items():
        gone = g["area_px"] == 0  # (T, K): entirely outside the frame
        # p_leave_enter = 1: one bird is inside the frame in some frames and entirely outside in others
        assert np.any(gone.any(0) & (~gone).any(0)), name
        assert g["visible_px"][0, -1] > 0  # the largest id is visible in frame 0 (the DAVIS object count)


def test_birds_turn_smoothly(synth):
    _, gt = synth
    for name, g in gt.items():
        q = torch.from_numpy(g["cameras_px"][..., 3:]).double()  # (T, K, 4)
        total = torch.rad2deg(quat_geodesic_angle(q[0], q[-1]))
        step = torch.rad2deg(quat_geodesic_angle(q[1:], q[:-1]))
        # every bird turns: yaw >= 0.15·180° minus 0.1 rad of wobble, and R_y(a)·R_x(b) turns by >= |a|
        assert torch.all(total > 21.0), (name, total)
        # smoothly: |d(yaw)/dτ| + |d(rock)/dτ| <= π + 0.1·2π·1.5 + 0.2·2π·2 < 6.6 rad over τ in [0, 1]
        bound = np.rad2deg(6.6 / (len(q) - 1))
        assert torch.all(step < bound), (name, step.max(), bound)


def test_youtubevos_layout_valid_and_train(synth):
    out, gt = synth
    splits = split_names(N_SEQ, SETTINGS.val_fraction)
    for split in ("train", "valid"):
        ds = YouTubeVOSDataset(out / "youtubevos", split)
        assert ds.sequences == tuple(n for n, s in zip(gt, splits) if (s == "train") == (split == "train"))
        for seq in ds:
            g = gt[seq.name]
            t_len = len(g["frame_names"])
            assert seq.frame_names == tuple(ytvos_frame_names(t_len))
            assert set(np.diff(seq.frame_numbers)) == {5}
            vis = g["visible_px"] > 0
            first = [int(np.argmax(vis[:, k])) for k in range(vis.shape[1]) if vis[:, k].any()]
            assert [o.first_frame for o in seq.objects] == first
            assert all(o.category == "bird" for o in seq.objects)
            if (
                split == "valid"
            ):  # first-appearance annotations only, each holding only the objects starting there
                assert seq.annotated == tuple(t in first for t in range(t_len))
                for s in seq.first_appearances():
                    assert s.mask.sum() == g["visible_px"][s.frame_index, s.object_id - 1]
                    fm = seq.load_masks(s.frame_index)
                    starting = {o.id for o in seq.objects if o.first_frame == s.frame_index}
                    assert {i for i, p in zip(fm.object_ids, fm.present()) if p} == starting
            else:
                assert all(seq.annotated)
                for t in range(t_len):
                    sums = seq.load_masks(t).masks.sum(dim=(1, 2)).numpy()
                    np.testing.assert_array_equal(sums, g["visible_px"][t, : len(sums)])
    assert verify_dataset(out / "youtubevos").ok


def brute_force_silhouette(tri: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: pixel centres ``(u, v)`` (integers) inside any triangle ``tri (F, 3, 2)``."""
    out = np.zeros(hw, bool)
    lo = np.clip(np.floor(tri.reshape(-1, 2).min(0)).astype(int) - 1, 0, None)
    hi = np.minimum(np.ceil(tri.reshape(-1, 2).max(0)).astype(int) + 2, (hw[1], hw[0]))
    v, u = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]]
    p = np.stack([u.ravel(), v.ravel()], 1).astype(np.float32)[:, None]  # (N, 1, 2)
    a, b, c = (tri[None, :, i] for i in range(3))  # (1, F, 2)

    def cross(o, d, q):
        return (d[..., 0] - o[..., 0]) * (q[..., 1] - o[..., 1]) - (d[..., 1] - o[..., 1]) * (
            q[..., 0] - o[..., 0]
        )

    d1, d2, d3 = cross(a, b, p), cross(b, c, p), cross(c, a, p)
    inside = ((d1 >= 0) & (d2 >= 0) & (d3 >= 0)) | ((d1 <= 0) & (d2 <= 0) & (d3 <= 0))
    out[lo[1] : hi[1], lo[0] : hi[0]] = inside.any(1).reshape(v.shape)
    return out


def test_cameras_project_onto_the_masks(synth):
    """A fully visible bird's annotation equals a brute-force rasterisation of its stored shape projected with
    its stored frame-pixel camera (pixel centres at integer coordinates)."""
    out, gt = synth
    checked = 0
    for name, g in gt.items():
        hw = tuple(int(v) for v in g["frame_size"])
        for t in range(len(g["frame_names"])):
            for k, oid in enumerate(g["object_ids"]):
                if (
                    g["truncated"][t, k]
                    or g["visible_px"][t, k] != g["area_px"][t, k]
                    or g["area_px"][t, k] < 30
                ):
                    continue
                lab = np.array(Image.open(out / "DAVIS" / "Annotations" / "480p" / name / f"{t:05d}.png"))
                p = project_points(torch.from_numpy(g["verts"][k]), torch.from_numpy(g["cameras_px"][t, k]))
                ref = brute_force_silhouette(p[:, :2].numpy()[g["faces"]], hw)
                mask = lab == oid
                wrong = int((ref != mask).sum())
                # measured: 0 wrong pixels; a half-pixel convention slip gives 11-38 on these ~70-220 px birds
                assert wrong <= 2, (name, t, k, wrong, int(mask.sum()))
                checked += 1
    assert checked >= 10


def test_palette_png_and_voc_colours(synth):
    out, _ = synth
    im = Image.open(out / "DAVIS" / "Annotations" / "480p" / "birds-000" / "00000.png")
    assert im.mode == "P"
    pal = voc_palette()
    assert pal[3:6] == [128, 0, 0] and pal[6:9] == [0, 128, 0] and pal[765:768] == [224, 224, 192]


def test_cli_deterministic_and_verified(tmp_path):
    args = ["--n-seq", "1", "--height", "32", "--min-frames", "3", "--max-frames", "3", "--no-progress"]
    outs = []
    for run, seed, layout in (("a", "1", "davis"), ("b", "1", "davis"), ("c", "2", "both")):
        out = tmp_path / run
        assert (
            cli.main(["data", "synth-video", "--out", str(out), "--seed", seed, "--layout", layout, *args])
            == 0
        )
        outs.append(out)
    rel = "DAVIS/Annotations/480p/birds-000/00002.png"
    img = "DAVIS/JPEGImages/480p/birds-000/00002.jpg"
    assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes()
    assert (outs[0] / img).read_bytes() == (outs[1] / img).read_bytes()
    assert (outs[0] / img).read_bytes() != (outs[2] / img).read_bytes()
    rep = verify_dataset(outs[0])
    assert rep.kind == "davis" and rep.ok, rep.format()
    assert not (outs[0] / "youtubevos").exists()
    rep = verify_dataset(outs[2] / "youtubevos")  # one sequence: a train split only
    assert rep.kind == "youtubevos" and rep.ok, rep.format()
    assert not (outs[2] / "youtubevos" / "valid").exists()


def test_settings_validation():
    with pytest.raises(ValueError, match="min_frames <= max_frames"):
        VideoSynthSettings(min_frames=10, max_frames=5)
    with pytest.raises(ValueError, match="height must be an integer >= 16"):
        VideoSynthSettings(height=8)
    with pytest.raises(ValueError, match="max_birds must be in 1..254"):
        VideoSynthSettings(max_birds=0)
    with pytest.raises(ValueError, match="layout must be one of"):
        generate_synth_videos("/nonexistent", 1, layout="kinetics")
    with pytest.raises(ValueError, match=r"n_seq must be an integer in \[1, 100000\]"):
        generate_synth_videos("/nonexistent", 0)
    assert split_names(1, 1 / 3) == ["train"]
    assert split_names(6, 1 / 3) == ["train"] * 4 + ["val"] * 2
