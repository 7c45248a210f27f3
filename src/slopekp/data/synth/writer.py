"""The SynthBirds dataset writer (CMR's on-disk format, ``docs/data.md``) and its worker pool.

:func:`generate_synthbirds` draws every instance (:mod:`~slopekp.data.synth.bird`,
:mod:`~slopekp.data.synth.background`, :mod:`~slopekp.data.synth.scene`), renders them in fixed batches and
writes the images, the ``.mat`` annotations and ``meta.json``. Determinism: instance ``i`` of split ``s`` uses
only ``np.random.default_rng([seed, split_code(s), i])`` (a look other than the default, its appearance from
``[seed, split_code(s), i, 1]``: the same seed gives the same shapes and cameras in every look) and instances
are rendered in fixed batches, so any number of worker processes writes identical files.

Pixel conventions of the written files: the renderer samples pixel *centres*, so a point at NDC ``x``
lands in column ``u = ((x + 1)·W − 1)/2`` (0-based). The stored SfM camera and keypoints use exactly this
map (1-based: ``+1``): ``scale = s·W/2``, ``trans = (t + 1)·W/2 + 1/2``. ``S`` in ``anno_<split>.mat`` is
the 15 keypoints of the *undeformed* template in the template frame (not CMR's normalisation).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from slopekp.data.matfiles import CubRecord, SfmAnnotations, write_cub_cleaned, write_sfm_anno
from slopekp.data.meshes import write_true_meshes
from slopekp.data.synth.background import random_background, random_occluder, styled_background
from slopekp.data.synth.bird import BirdInstance, keypoint_vertices, restyle_plumage, sample_bird
from slopekp.data.synth.options import SynthOptions
from slopekp.data.synth.scene import (
    BirdRender,
    composite,
    keypoint_parts,
    mask_bbox,
    place_camera,
    random_lighting,
    render_birds,
    rotation_matrix,
    styled_lighting,
)
from slopekp.data.synth.texture import STYLES
from slopekp.data.viewpoints import sample_viewpoint
from slopekp.mesh import load_template
from slopekp.render import Lighting, Renderer, RenderSettings
from slopekp.utils import atomic_save_json, atomic_write, spawned_map
from slopekp.version import __version__

__all__ = ["CLASS_NAMES", "GENERATOR_VERSION", "generate_synthbirds"]

GENERATOR_NAME = "slopekp.data.synthetic"
"""``generator`` in ``meta.json``: the name SynthBirds folders have always carried (readers recognise a SynthBirds
folder by it, e.g. :mod:`slopekp.train.stage3`); it names the generator, not a module to import."""
GENERATOR_VERSION = "1.0"
RENDER_BATCH = 8
"""Instances rendered per renderer call (fixed, so the output does not depend on the number of workers)."""
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
#: Class folder names (``class_id`` = index + 1), one per texture style.
CLASS_NAMES = tuple(f"{i + 1:03d}.{s}_Synthbird" for i, s in enumerate(STYLES))


@dataclass
class _Instance:
    record: CubRecord
    rot: np.ndarray
    scale: float
    trans: np.ndarray
    occluded: bool
    truncated: bool
    verts: np.ndarray | None
    """(V, 3) float32 the bird's true mesh (object frame); test split only (the one written to disk)."""


@dataclass
class _Prepared:
    rng: np.random.Generator
    split: str
    index: int
    bird: BirdInstance
    camera: np.ndarray
    lighting: Lighting
    background: np.ndarray
    occluded: bool
    truncated: bool


def _prepare(template, split: str, index: int, opts: SynthOptions) -> _Prepared:
    """Everything random before rendering, drawn from the instance's own RNG."""
    rng = np.random.default_rng([opts.seed, SPLIT_CODES[split], index])
    bird = sample_bird(rng, template, opts.deform)
    truncated = bool(rng.uniform() < opts.truncation_prob)
    occluded = bool(rng.uniform() < opts.occlusion_prob)
    background = random_background(rng, opts.size, opts.size)
    quat = sample_viewpoint(rng, 1)[0]
    camera = place_camera(rng, bird.verts, quat, opts, truncated)
    lighting = random_lighting(rng)
    # another look replaces what the default drew with draws of a stream of its own, so that the instance's shape,
    # camera, occluder and keypoints are those of the default look (a held-out look differs in appearance only)
    look_rng = np.random.default_rng([opts.seed, SPLIT_CODES[split], index, 1])
    bird = restyle_plumage(bird, template, opts.plumage, look_rng)
    if opts.background != "natural":
        background = styled_background(look_rng, opts.background, opts.size, opts.size)
    if opts.lighting != "lambert":
        lighting = styled_lighting(look_rng, opts.lighting)
    return _Prepared(rng, split, index, bird, camera, lighting, background, occluded, truncated)


def _finish(prep: _Prepared, render: BirdRender, kp_idx: Tensor, opts: SynthOptions, out_dir) -> _Instance:
    """Composite, occlude, find visible keypoints and write the image of one prepared, rendered instance."""
    rng, cam, size = prep.rng, prep.camera, opts.size
    img, bird_mask = composite(render, prep.background, size, opts.supersample)
    bbox0 = mask_bbox(bird_mask)
    if bbox0 is None:  # cannot happen: place_camera keeps >= 65% of the bird's extent inside the image
        raise RuntimeError(f"{prep.split} instance {prep.index}: the bird is not visible")
    mask = bird_mask.copy()
    occ = np.zeros((size, size), np.float32)
    if prep.occluded:
        occ, occ_col = random_occluder(rng, size, bbox0)
        img = img * (1 - occ[..., None]) + occ[..., None] * occ_col
        mask &= occ < 0.5
    img = np.clip(img + rng.normal(0, 0.01, size=img.shape), 0, 1)

    # keypoints: project, z-buffer test in the high-resolution render, then the occluder and the image bounds
    parts = keypoint_parts(prep.bird.verts[kp_idx], cam, render, size, occ)

    rel_path = f"{CLASS_NAMES[prep.bird.style]}/synth_{prep.split}_{prep.index:06d}.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.round(img * 255).astype(np.uint8)).save(buf, format="JPEG", quality=95)
    with atomic_write(Path(out_dir) / "images" / rel_path, "wb") as f:
        f.write(buf.getvalue())
    record = CubRecord(
        id=0,  # filled in by the caller
        rel_path=rel_path,
        train=int(prep.split == "train"),
        test=int(prep.split != "train"),
        bbox=bbox0 + 1.0,
        width=size,
        height=size,
        parts=parts,
        mask=mask.astype(np.uint8),
        class_id=prep.bird.style + 1,
    )
    return _Instance(
        record=record,
        rot=rotation_matrix(cam[3:]),
        scale=float(cam[0] * size / 2),
        trans=(cam[1:3] + 1) * size / 2 + 0.5,
        occluded=prep.occluded,
        truncated=prep.truncated,
        verts=prep.bird.verts.detach().cpu().numpy().astype(np.float32) if prep.split == "test" else None,
    )


def _make_batch(template, renderer, kp_idx, jobs: list[tuple[str, int]], opts: SynthOptions, out_dir):
    """Prepare, render (one batched call) and finish the instances ``jobs`` = [(split, index), ...]."""
    preps = [_prepare(template, split, index, opts) for split, index in jobs]
    renders = render_birds(
        renderer,
        template,
        torch.stack([p.bird.verts for p in preps]),
        torch.stack([p.bird.uv_image for p in preps]),
        torch.as_tensor(np.stack([p.camera for p in preps]), dtype=torch.float32),
        [p.lighting for p in preps],
    )
    return [_finish(p, r, kp_idx, opts, out_dir) for p, r in zip(preps, renders)]


# ------------------------------------------------------------------------------------------------ worker pool
# Per-process state of the worker pool (built once per process by the initializer).
_WORKER: dict = {}


def _worker_init(size: int, supersample: int) -> None:
    torch.set_num_threads(1)
    template = load_template("procedural")
    _WORKER.update(
        template=template,
        renderer=Renderer(RenderSettings(image_size=size * supersample)),
        kp=torch.as_tensor(keypoint_vertices(template)),
    )


def _worker_run(args) -> list[_Instance]:
    jobs, opts, out_dir = args
    w = _WORKER
    return _make_batch(w["template"], w["renderer"], w["kp"], jobs, opts, out_dir)


def _render_all(opts: SynthOptions, out: Path, progress: bool) -> list[_Instance]:
    """Every instance (train, then test) in fixed batches of consecutive instances (independent of ``workers``:
    one renderer call per batch), in this process or ``opts.workers`` worker processes."""
    flat = [(split, i) for split, n in (("train", opts.n_train), ("test", opts.n_test)) for i in range(n)]
    batches = [(flat[i : i + RENDER_BATCH], opts, str(out)) for i in range(0, len(flat), RENDER_BATCH)]
    bar = tqdm(total=len(flat), desc="synthbirds", unit="img") if progress else None
    results: list[_Instance] = []
    threads = torch.get_num_threads()  # the in-process path renders with one thread, as a worker does ...
    try:
        with contextlib.ExitStack() as stack:
            if opts.workers == 0:
                _worker_init(opts.size, opts.supersample)
                outputs = map(_worker_run, batches)
            else:
                init = (opts.size, opts.supersample)
                outputs = stack.enter_context(spawned_map(_worker_run, batches, opts.workers, _worker_init, init))
            for res in outputs:
                results.extend(res)
                if bar is not None:
                    bar.update(len(res))
    finally:
        torch.set_num_threads(threads)  # ... and gives the caller its threads back (Stage I-III run next)
        if bar is not None:
            bar.close()
    return results


def generate_synthbirds(
    out_dir: str | os.PathLike,
    n_train: int | None = None,
    n_test: int | None = None,
    *,
    options: SynthOptions | None = None,
    progress: bool = True,
    **settings: Any,
) -> Path:
    """Write a SynthBirds dataset in CMR format to ``out_dir`` and return its path.

    Give the settings as ``options`` (a :class:`~slopekp.data.synth.options.SynthOptions`), or as keywords:
    ``n_train``, ``n_test`` and any other field of it (``size=``, ``seed=``, ``workers=`` ...), the rest at its
    default.

    Files: ``images/<class>/synth_<split>_<index>.jpg``, ``train_cub_cleaned.mat``, ``test_cub_cleaned.mat``,
    ``anno_train.mat``, ``anno_test.mat`` (``S`` = template keypoints), ``meshes_test.npz`` (the test birds' true
    meshes, :mod:`slopekp.data.meshes`) and ``meta.json`` (generator version, options, keypoint vertex indices,
    which instances are occluded / truncated). Ids are 1-based: train
    ``1..n_train``, test ``n_train + 1 ..``. Deterministic for a given ``seed`` whatever ``workers`` is
    (0 = in this process; N = N worker processes).

    Raises:
        ValueError: sizes or counts out of range (``16 <= size <= MAX_SYNTH_SIZE``, counts ``<= MAX_SYNTH_COUNT``
            per split; see :mod:`slopekp.utils`), probabilities outside [0, 1], negative deform.
        TypeError: neither ``options`` nor both counts given, or ``options`` and keywords together.
    """
    if options is None:
        if n_train is None or n_test is None:
            raise TypeError("generate_synthbirds() needs options= or both n_train and n_test")
        options = SynthOptions(n_train=n_train, n_test=n_test, **settings)
    elif n_train is not None or n_test is not None or settings:
        raise TypeError("generate_synthbirds() takes options= or the settings as keywords, not both")
    else:
        options.validate()  # a dataclass can be changed after it was built
    opts = options  # short name below
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = _render_all(opts, out, progress)

    template = load_template("procedural")
    kp_idx = keypoint_vertices(template)
    S = template.verts[kp_idx].double().numpy().T.copy()  # (3, 15) undeformed template keypoints
    meta_splits = {}
    start = 0
    for split, n in (("train", opts.n_train), ("test", opts.n_test)):
        part = results[start : start + n]
        for i, r in enumerate(part):
            r.record.id = start + i + 1
        start += n
        write_cub_cleaned(out / f"{split}_cub_cleaned.mat", [r.record for r in part])
        write_sfm_anno(
            out / f"anno_{split}.mat",
            SfmAnnotations(
                rot=np.stack([r.rot for r in part]) if part else np.zeros((0, 3, 3)),
                scale=np.array([r.scale for r in part]),
                trans=np.stack([r.trans for r in part]) if part else np.zeros((0, 2)),
                S=S,
            ),
        )
        if split == "test":  # the true shapes, for the evaluation's shape accuracy (slopekp.data.meshes)
            write_true_meshes(out, split, [r.record.id for r in part],
                              np.stack([r.verts for r in part]) if part else np.zeros((0, len(template.verts), 3)),
                              template.faces.cpu().numpy())  # fmt: skip
        meta_splits[split] = {
            "n": n,
            "occluded": [i for i, r in enumerate(part) if r.occluded],
            "truncated": [i for i, r in enumerate(part) if r.truncated],
        }
    atomic_save_json(
        {
            "generator": GENERATOR_NAME,
            "generator_version": GENERATOR_VERSION,
            "slopekp_version": __version__,
            "template": "procedural",
            "seed": int(opts.seed),
            "options": opts.instance_options(),
            "classes": list(CLASS_NAMES),
            "keypoint_vertices": [int(i) for i in kp_idx],
            "pixel_convention": "u0 = ((x_ndc + 1) * W - 1) / 2; .mat values are 1-based (u0 + 1)",
            "splits": meta_splits,
        },
        out / "meta.json",
    )
    return out
