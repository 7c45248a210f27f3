"""SynthBirds videos on disk: :func:`generate_synth_videos` and the DAVIS 2017 / YouTube-VOS writers.

``slopekp data synth-video --out DIR --n-seq N --seed S [--layout davis|youtubevos|both]`` calls
:func:`generate_synth_videos`, which draws each sequence with :func:`slopekp.data.synth.video.synthesize_video`
and writes it.

Output (``DIR``)
----------------
- ``DAVIS/JPEGImages/480p/<seq>/%05d.jpg``, ``DAVIS/Annotations/480p/<seq>/%05d.png`` (palette PNG, PASCAL VOC
  colours, values = object ids, 0 background; no void), ``DAVIS/ImageSets/2017/{train,val}.txt``. The folder
  is called ``480p`` as in DAVIS whatever ``height`` is.
- ``youtubevos/{train,valid}/JPEGImages/<seq>/<name>.jpg`` with names stepping by 5 (``00000, 00005, …``),
  ``Annotations/<seq>/<name>.png`` (``train``: every frame; ``valid``: only the frame where an object first
  appears, holding only the objects that start there), ``meta.json`` (category ``"bird"``, each object's
  frames = the frames where it is visible).
- ``cameras/<seq>.npz`` (ground truth, ``np.load`` without pickle): ``frame_names (T,)`` str (DAVIS names),
  ``object_ids (K,)`` int64, ``cameras_px (T, K, 7)`` float32 weak-perspective cameras ``[s, tx, ty, qw,
  qx, qy, qz]`` in **pixels of the frame** (``u = s·(R X)_x + tx``, ``v = s·(R X)_y + ty``) with pixel
  *centres* at integer coordinates, as the SynthBirds images (the renderer samples pixel centres, so
  this map is exact: pixel ``(u, v)`` shows the surface point projecting to ``(u, v)``). Depth order:
  ``z = s·(R X)_z + 5`` is not used across birds; see ``depth_order``. ``verts (K, V, 3)`` float32 each
  bird's shape in the
  object frame, ``faces (F, 3)`` int64, ``area_px (T, K)`` int64 the bird's rendered pixels inside the frame
  before occlusion, ``visible_px (T, K)`` int64 its pixels in the annotation (after occlusion),
  ``truncated (T, K)`` bool whether part of it lies outside the frame, ``frame_size (2,)`` ``(H, W)``,
  ``depth_order (K,)`` int64 object indices from back to front.
- ``meta.json``: generator version, seed, settings, and per sequence its split and object ids.

JPEG frames are lossy (quality ``jpeg_quality``); annotations are exact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from slopekp.data.synth.video import SynthVideo, VideoSynthSettings, synthesize_video
from slopekp.data.video import save_label_png
from slopekp.mesh import load_template
from slopekp.utils import atomic_save_json, atomic_save_npz, atomic_write, current_umask

__all__ = [
    "LAYOUTS",
    "MAX_SEQUENCES",
    "check_video_options",
    "generate_synth_videos",
    "save_cameras",
    "split_names",
    "write_davis",
    "write_youtubevos",
    "ytvos_frame_names",
]

GENERATOR_VERSION = "synth-video-1"
LAYOUTS = ("davis", "youtubevos", "both")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` onto ``final`` (replacing an older copy)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _write_sequence_dir(parent: Path, name: str, files: list[tuple[str, object]], quality: int) -> None:
    """Write ``files`` (``(file name, uint8 array)``; ``.jpg`` RGB or ``.png`` labels) into ``parent/name``
    through a temporary sibling folder, so that a killed run never leaves a half-written sequence."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700: give the folder the mode mkdir would
    try:
        for fname, arr in files:
            if fname.endswith(".jpg"):
                Image.fromarray(arr).save(tmp / fname, format="JPEG", quality=quality)
            else:
                save_label_png(tmp / fname, arr)
        _replace_dir(tmp, parent / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_davis(root: Path, video: SynthVideo, quality: int = 90) -> None:
    """Write ``video`` into the DAVIS folder ``root`` (frames and annotations; not the ImageSets)."""
    names = video.frame_names
    _write_sequence_dir(
        root / "JPEGImages" / "480p",
        video.name,
        [(f"{n}.jpg", f) for n, f in zip(names, video.frames)],
        quality,
    )
    _write_sequence_dir(
        root / "Annotations" / "480p",
        video.name,
        [(f"{n}.png", a) for n, a in zip(names, video.labels)],
        quality,
    )


def ytvos_frame_names(n_frames: int) -> list[str]:
    """YouTube-VOS frame names of ``n_frames`` annotated frames: ``00000, 00005, …``."""
    return [f"{5 * t:05d}" for t in range(n_frames)]


def write_youtubevos(split_root: Path, video: SynthVideo, split: str, quality: int = 90) -> dict:
    """Write ``video`` into a YouTube-VOS split folder; return its ``meta.json`` entry.

    ``split == "train"`` writes every annotation; otherwise (valid-style) only each object's first-appearance
    frame, holding only the objects that start there.
    """
    names = ytvos_frame_names(len(video.frames))
    first = video.first_visible()
    anns = []
    for t, name in enumerate(names):
        if split == "train":
            anns.append((f"{name}.png", video.labels[t]))
        else:
            starting = [int(i) for i, f in zip(video.object_ids, first) if f == t]
            if starting:
                keep = np.isin(video.labels[t], starting)
                anns.append((f"{name}.png", np.where(keep, video.labels[t], 0).astype(np.uint8)))
    _write_sequence_dir(
        split_root / "JPEGImages", video.name, [(f"{n}.jpg", f) for n, f in zip(names, video.frames)], quality
    )
    _write_sequence_dir(split_root / "Annotations", video.name, anns, quality)
    objects = {}
    for k, oid in enumerate(video.object_ids):
        frames = [names[t] for t in range(len(names)) if video.visible_px[t, k] > 0]
        if frames:
            objects[str(int(oid))] = {"category": "bird", "frames": frames}
    return {"objects": objects}


def save_cameras(path: Path, video: SynthVideo) -> None:
    """Write the ground-truth side file ``cameras/<seq>.npz`` (keys in the module docstring)."""
    atomic_save_npz(
        path,
        frame_names=np.asarray(video.frame_names),
        object_ids=video.object_ids,
        cameras_px=video.cameras_px,
        verts=video.verts,
        faces=video.faces,
        area_px=video.area_px,
        visible_px=video.visible_px,
        truncated=video.truncated,
        depth_order=video.depth_order,
        frame_size=np.asarray(video.frames.shape[1:3], dtype=np.int64),
    )


def split_names(n_seq: int, val_fraction: float) -> list[str]:
    """Split of each sequence: the last ``round(n·val_fraction)`` (≥ 1 when ``n ≥ 2``) are ``val``."""
    n_val = int(round(n_seq * val_fraction))
    if n_seq >= 2 and val_fraction > 0:
        n_val = max(n_val, 1)
    n_val = min(n_val, n_seq - 1) if n_seq >= 2 else 0
    return ["train"] * (n_seq - n_val) + ["val"] * n_val


MAX_SEQUENCES = 100_000
"""Upper bound of ``n_seq`` (each sequence is a folder of frames; the list of them is made up front)."""


def check_video_options(n_seq: int, seed: int = 0, layout: str = "davis") -> None:
    """Raise ``ValueError`` naming the option for values :func:`generate_synth_videos` cannot honour (checked
    before anything is written)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not (isinstance(n_seq, int) and 1 <= n_seq <= MAX_SEQUENCES):
        raise ValueError(f"n_seq must be an integer in [1, {MAX_SEQUENCES}], got {n_seq!r}")
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        raise ValueError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}")


def generate_synth_videos(
    out: str | Path,
    n_seq: int,
    seed: int = 0,
    layout: str = "davis",
    settings: VideoSynthSettings | None = None,
    progress: bool = True,
) -> Path:
    """Generate ``n_seq`` SynthBirds sequences into ``out`` (layout and files in the module docstring).

    Args:
        out: output folder (created; existing sequences of the same name are replaced).
        n_seq: number of sequences (≥ 1).
        seed: master seed; sequence ``i`` uses ``np.random.default_rng([seed, i])``.
        layout: ``davis``, ``youtubevos`` or ``both``.
        settings: :class:`VideoSynthSettings` (defaults: 480p, 20–80 frames, up to 3 birds).
        progress: tqdm progress bar over sequences.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.
    """
    settings = settings if settings is not None else VideoSynthSettings()
    check_video_options(n_seq, seed, layout)
    out = Path(out)
    template = load_template("procedural")
    splits = split_names(n_seq, settings.val_fraction)
    names = [f"birds-{i:03d}" for i in range(n_seq)]
    davis_root, yt_root = out / "DAVIS", out / "youtubevos"
    yt_meta: dict[str, dict] = {"train": {}, "valid": {}}
    records = []
    for i in tqdm(range(n_seq), desc="synth-video", disable=not progress):
        rng = np.random.default_rng([seed, i])
        video = synthesize_video(names[i], rng, template, settings, light_seed=seed * 100003 + i)
        if layout in ("davis", "both"):
            write_davis(davis_root, video, settings.jpeg_quality)
        if layout in ("youtubevos", "both"):
            yt_split = "train" if splits[i] == "train" else "valid"
            yt_meta[yt_split][video.name] = write_youtubevos(
                yt_root / yt_split, video, yt_split, settings.jpeg_quality
            )
        save_cameras(out / "cameras" / f"{video.name}.npz", video)
        records.append(
            {
                "name": video.name,
                "split": splits[i],
                "frames": len(video.frames),
                "object_ids": video.object_ids.tolist(),
            }
        )
    if layout in ("davis", "both"):
        for split in ("train", "val"):
            text = "".join(f"{n}\n" for n, s in zip(names, splits) if s == split)
            path = davis_root / "ImageSets" / "2017" / f"{split}.txt"
            with atomic_write(path, "w") as f:
                f.write(text)
    if layout in ("youtubevos", "both"):
        for split, videos in yt_meta.items():
            if videos:  # a split without videos gets no folder (n_seq = 1 has no valid split)
                atomic_save_json({"videos": videos}, yt_root / split / "meta.json")
    meta = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "layout": layout,
        "template": "procedural",
        "settings": asdict(settings),
        "frame_size": list(settings.frame_size),
        "sequences": records,
    }
    atomic_save_json(meta, out / "meta.json")
    return out
