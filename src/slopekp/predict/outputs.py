"""What ``slopekp predict`` writes: one folder per photo and an index of them all.

``OUT/<name>/`` (``<name>``: the photo's file stem, made unique) holds

* ``mesh.obj`` + ``mesh.mtl`` + ``mesh.png`` (the UV texture) and ``mesh.glb``: the textured mesh in the object
  frame (``docs/conventions.md``; open in Blender, MeshLab or a browser);
* ``camera.json``: the camera, its rotation and viewpoint, and the crop's box in the photo
  (:meth:`~slopekp.predict.api.Reconstruction.camera_dict`);
* ``mask.png``: the predicted silhouette pasted back into the photo (photo size, 0 or 255);
* ``input.png``: the crop the model saw, at the figures' size;
* ``figure.png``: input | mesh in the predicted pose | textured | mask over the input | three novel views;
* ``turntable.gif``: the textured mesh turning about the image's vertical axis.

``OUT/manifest.json`` says that ``slopekp predict`` made the folder, and with which checkpoint
(:func:`slopekp.manifest.prepare_output_dir`). ``OUT/predictions.json`` lists every photo with its folder, its
status (``ok`` or ``error`` and the message), its warnings and the model card, so that a batch with a bad photo
still says what happened to each. Every file is written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from slopekp.manifest import Manifest, file_input
from slopekp.predict.api import Reconstruction
from slopekp.predict.inputs import crop_photo
from slopekp.utils import atomic_save_json
from slopekp.viz.figures import overlay_mask, pyplot, save_figure, save_image, save_png, to_uint8

__all__ = ["INDEX", "NOVEL_VIEWS", "OUTPUT_FILES", "PREDICT_COMMAND", "jsonable", "predict_manifest", "read_index",
           "remove_outputs", "unique_names", "write_index", "write_reconstruction"]

INDEX = "predictions.json"
PREDICT_COMMAND = "predict"
INDEX_FORMAT = "slopekp.predictions/1"
#: The figure's novel views, ``(azimuth, elevation)`` in degrees (U-CMR's demo: 30° and 60° about the vertical
#: axis with 20° of elevation, and 60° about the horizontal axis).
NOVEL_VIEWS = ((30.0, 20.0), (60.0, 20.0), (0.0, 60.0))


#: The files :func:`write_reconstruction` may write into a photo's folder (and :func:`remove_outputs` removes).
OUTPUT_FILES = ("mesh.obj", "mesh.mtl", "mesh.png", "mesh.glb", "camera.json", "mask.png", "input.png", "figure.png",
                "turntable.gif")  # fmt: skip


def unique_names(paths: list[Path], earlier: list[dict[str, Any]] = ()) -> list[str]:
    """Folder names for ``paths``: their stems, with ``-2``, ``-3`` ... added to repeats (a name is never given
    twice, also when a stem already ends in ``-2``; compared without case, for case-insensitive file systems).

    ``earlier``: the entries of the folder's index from earlier runs (``image``, ``name``). A path predicted before
    gets its earlier name back (its folder is replaced); no other path gets a name in use by them."""
    before = {os.path.abspath(str(e.get("image"))): str(e.get("name")) for e in earlier}
    used = {name.lower() for name in before.values()}
    out = []
    for p in paths:
        again = before.pop(os.path.abspath(p), None)
        if again is not None:
            out.append(again)
            continue
        stem = Path(p).stem or "image"
        name, n = stem, 1
        while name.lower() in used:
            n += 1
            name = f"{stem}-{n}"
        used.add(name.lower())
        out.append(name)
    return out


def predict_manifest(checkpoint: str | os.PathLike, head: str) -> Manifest:
    """The run manifest of a predict folder: the checkpoint's content fingerprint and its head (the photos, sizes
    and turntables are not compared: a rerun with the same checkpoint adds photos to the folder)."""
    return Manifest(PREDICT_COMMAND, inputs={"checkpoint": file_input(checkpoint)}, settings={"head": head})


def read_index(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The photo entries of ``OUT/predictions.json`` (none when it is missing).

    Raises:
        ValueError: naming the file, when it is not an index of ``slopekp predict``.
    """
    path = Path(out) / INDEX
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        entries = data["images"] if data.get("format") == INDEX_FORMAT else None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: unreadable index of `slopekp predict` ({type(e).__name__}: {e}); pass "
                         "--overwrite to start the folder afresh") from e  # fmt: skip
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                for e in entries):  # fmt: skip
        raise ValueError(f"{path}: not an index of `slopekp predict` (format {INDEX_FORMAT}); pass --overwrite to "
                         "start the folder afresh")  # fmt: skip
    return entries


def remove_outputs(folder: Path) -> None:
    """Remove what an earlier run wrote for a photo (:data:`OUTPUT_FILES`; nothing else), so that a photo that fails
    now leaves no stale mesh behind."""
    for name in OUTPUT_FILES:
        (folder / name).unlink(missing_ok=True)


def display_crop(photo: np.ndarray, rec: Reconstruction, size: int) -> np.ndarray:
    """``(size, size, 3)`` the photo's crop (the box the model saw) at ``size``², from the full-resolution photo."""

    return crop_photo(photo, rec.crop.box, size, 0.0, rec.crop.source).image  # the box is square already


def write_reconstruction(rec: Reconstruction, photo: np.ndarray, out: str | os.PathLike, *, title: str = "",
                         size: int = 256, turntable_frames: int = 36) -> list[Path]:  # fmt: skip
    """Write the files of the module docstring for one photo into ``out`` (created); returns them."""


    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [*rec.export(out / "mesh.obj"), *rec.export(out / "mesh.glb")]
    atomic_save_json(rec.camera_dict(), out / "camera.json")
    files.append(out / "camera.json")
    mask = rec.photo_mask()
    save_image(out / "mask.png", Image.fromarray(mask.astype(np.uint8) * 255, mode="L"), optimize=True)
    files.append(out / "mask.png")
    crop = display_crop(photo, rec, size)
    save_png(out / "input.png", crop)
    files.append(out / "input.png")
    panels = [("input", crop), ("mesh, predicted pose", _rgb(rec.render(textured=False, size=size))),
              ("textured", _rgb(rec.render(size=size))),
              ("predicted mask", overlay_mask(crop, rec.mask(size).cpu().numpy(), alpha=0.45))]  # fmt: skip
    for az, el in NOVEL_VIEWS:
        panels.append((f"novel view {az:.0f}°, {el:.0f}°", _rgb(rec.render(azimuth=az, elevation=el, size=size))))
    _figure(out / "figure.png", panels, title)
    files.append(out / "figure.png")
    if turntable_frames > 0:
        _turntable(out / "turntable.gif", rec, turntable_frames, size=min(size, 192))
        files.append(out / "turntable.gif")
    return files


def write_index(out: str | os.PathLike, entries: list[dict[str, Any]], *, checkpoint: str, card: dict) -> Path:
    """Write ``OUT/predictions.json``: ``entries`` (one per photo: ``image``, ``name``, ``status``, ``error``,
    ``files``) with the checkpoint and its model card."""
    path = Path(out) / INDEX
    atomic_save_json({"format": INDEX_FORMAT, "checkpoint": str(checkpoint), "model": jsonable(card),
                      "images": entries}, path)  # fmt: skip
    return path


def jsonable(x: Any) -> Any:
    """``x`` with values JSON cannot hold (tensors, numpy scalars) turned into plain numbers or strings."""
    return json.loads(json.dumps(x, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _rgb(rgba) -> np.ndarray:
    return rgba[:3].permute(1, 2, 0).cpu().numpy()


def _figure(path: Path, panels: list[tuple[str, np.ndarray]], title: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.0 * len(panels), 2.45), layout="constrained")
    for ax, (name, im) in zip(axes, panels):
        ax.imshow(im if im.dtype == np.uint8 else np.clip(im, 0, 1))
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def _turntable(path: Path, rec: Reconstruction, frames: int, size: int) -> None:
    images = [Image.fromarray(to_uint8(_rgb(rec.render(azimuth=360.0 * i / frames, size=size))))
              for i in range(frames)]  # fmt: skip
    save_image(path, images[0], "GIF", save_all=True, append_images=images[1:], duration=80, loop=0)
