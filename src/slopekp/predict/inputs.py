"""A user's photo → the square crop the network reads (METHOD §1.2 at test time, for images without annotations).

Conventions (``docs/conventions.md``): pixels are 0-based (column ``u``, row ``v``); a box is
``[x1, y1, x2, y2]`` with **inclusive** corners, like the CUB loader's. The object's box comes from

* a mask (``mask``: the tight box of its foreground),
* a box (``bbox``), or
* neither: the whole photo, with a warning (the network was trained on crops centred on one bird).

The box is padded by the training run's ``data.padding_frac`` on each side, squared about its centre, cut out of
the photo (pixels outside it are white, as in training) and resized to the network's input size. The map from
photo pixels to crop pixels is kept (:attr:`PhotoCrop.affine`), so that a rendered mask can be pasted back
(:func:`slopekp.data.transforms.paste_crop`).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from slopekp.data import transforms as T

#: Where a crop's box came from.
BOX_SOURCES = ("mask", "bbox", "whole image")


@dataclass(frozen=True, eq=False)
class PhotoCrop:
    """One photo prepared for the network.

    Attributes:
        image: ``(S, S, 3)`` float32 RGB in [0, 1], the network's input (not yet normalised).
        box: ``(4,)`` the square box cut out of the photo (0-based inclusive pixels; may reach outside it).
        affine: photo pixels → pixels of ``image`` (:class:`slopekp.data.transforms.PixelAffine`).
        photo_size: ``(H, W)`` of the photo.
        source: one of :data:`BOX_SOURCES`.
        texture_image: ``(S', S', 3)`` the same square cut at the photo texture's side
            (:data:`slopekp.predict.api.TEXTURE_SIDE`), or None: the photo texture then reads ``image``.
    """

    image: np.ndarray
    box: np.ndarray
    affine: T.PixelAffine
    photo_size: tuple[int, int]
    source: str
    texture_image: np.ndarray | None = None


def _open(path: Path, what: str):
    """A Pillow image of ``path``, decoded and turned upright by its EXIF orientation (as phone photos need).

    Raises:
        ValueError: naming the file: missing, a folder, not an image, or too large to decode safely.
    """

    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not {what}")
    if not path.is_file():
        if path.is_symlink():
            raise ValueError(f"{path}: {what} file not found ({_broken_link(path)})")
        raise ValueError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: {what} too large to decode safely ({e})") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: corrupt or unreadable {what} ({type(e).__name__}: {e})") from e


def _broken_link(path: Path) -> str:
    """Why a symbolic link leads to no file: a loop, or a missing target (named)."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 raises this for a loop
        return "a symbolic link loop"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop"
    return f"a broken symbolic link to {os.readlink(path)}, which does not exist"


def _to_unit(a: np.ndarray, name: str) -> np.ndarray:
    """Pixel values → float32 in [0, 1]: uint8 / 255, uint16 / 65535, other integers by whether they exceed 255;
    floats as they are (checked)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype.kind in "iu":
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"{name}: integer pixel values must lie in [0, 255] or [0, 65535]")
        return a.astype(np.float32) / (65535.0 if a.size and a.max() > 255 else 255.0)
    if a.dtype == bool:
        return a.astype(np.float32)
    a = a.astype(np.float32)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"{name}: a float image must be finite and in [0, 1]")
    return a


def _rgb_on_white(a: np.ndarray) -> np.ndarray:
    """``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` in [0, 1] → ``(H, W, 3)``; transparency is composited over white,
    the background the network was trained on."""
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        alpha = a[..., 3:]
        return a[..., :3] * alpha + (1.0 - alpha)
    return a


def read_photo(image: Any, name: str = "image") -> np.ndarray:
    """A photo as ``(H, W, 3)`` float32 RGB in [0, 1].

    Args:
        image: a file path (any format Pillow reads; turned upright by its EXIF orientation; 16-bit images keep
            their range; grey and palette images become RGB; transparency is composited over white), a
            ``PIL.Image``, an ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` array or a ``(3, H, W)`` tensor (uint8 in
            [0, 255], uint16 in [0, 65535], or float in [0, 1]).
        name: how errors name an in-memory image.

    Raises:
        ValueError: naming the file: missing, not an image, too large, or an array of another shape or range.
    """

    if isinstance(image, (str, os.PathLike)):
        name, image = str(image), _open(Path(image), "image")
    if isinstance(image, Image.Image):
        im = image
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            a = _to_unit(np.asarray(im), name)
        else:
            im = im.convert("RGBA" if ("A" in im.getbands() or "transparency" in im.info) else "RGB")
            a = np.asarray(im, dtype=np.float32) / 255.0
    else:
        if isinstance(image, torch.Tensor):
            if image.dim() != 3 or image.shape[0] not in (3, 4):
                raise ValueError(f"{name}: a tensor image must have shape (3, H, W), got {tuple(image.shape)}")
            image = image.detach().permute(1, 2, 0).cpu().numpy()
        a = np.asarray(image)
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
            raise ValueError(f"{name}: an image must have shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
        a = _to_unit(a, name)
    a = _rgb_on_white(a)
    if min(a.shape[:2]) < 1:
        raise ValueError(f"{name}: the image is empty ({a.shape[0]}x{a.shape[1]})")
    return np.ascontiguousarray(a, dtype=np.float32)


def read_mask(mask: Any, photo_size: tuple[int, int], name: str = "mask") -> np.ndarray:
    """An object mask as ``(H, W)`` bool, checked against the photo's size.

    Args:
        mask: a file path or an array. Foreground is: index > 0 and not 255 (void) in a palette PNG (the DAVIS
            format: one object per index, all of them taken); in a grey or colour image (any channel; alpha is
            ignored), values above half the range (> 127 for 8 bits), or > 0 when the values are only 0 and 1; in an
            array, > 0.5 for floats and > 0 for bools and integers. A file is turned upright by its EXIF
            orientation, as the photo is.
        photo_size: ``(H, W)`` the mask must have.

    Raises:
        ValueError: naming the file: unreadable, another size than the photo, or no foreground pixel.
    """
    if isinstance(mask, (str, os.PathLike)):
        name = str(mask)
        im = _open(Path(mask), "mask")
        if im.mode == "P":
            idx = np.asarray(im)
            m = (idx > 0) & (idx != 255)
        else:
            a = np.asarray(im if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "1") else im.convert("RGB"))
            a = a.max(axis=2) if a.ndim == 3 else a
            top = float(a.max()) if a.size else 0.0
            m = a > 0 if top <= 1 else a > (127 if top <= 255 else 32767)
    else:
        a = np.asarray(mask)
        if a.ndim != 2:
            raise ValueError(f"{name}: a mask must have shape (H, W), got {a.shape}")
        m = a > 0.5 if a.dtype.kind == "f" else a > 0
    if m.shape != tuple(photo_size):
        raise ValueError(
            f"{name}: mask size {m.shape[0]}x{m.shape[1]} differs from the image size "
            f"{photo_size[0]}x{photo_size[1]} (height x width)"
        )
    if not m.any():
        raise ValueError(f"{name}: the mask has no foreground pixel")
    return m


def parse_bbox(text: str | Any) -> np.ndarray:
    """``"x1,y1,x2,y2"`` (commas and/or spaces) or 4 numbers → ``(4,)`` float64, 0-based inclusive corners.

    Raises:
        ValueError: not 4 finite numbers, or ``x2 < x1`` / ``y2 < y1``.
    """
    if isinstance(text, str):
        parts = [p for p in text.replace(",", " ").split() if p != ""]
        try:
            box = np.array([float(p) for p in parts], dtype=np.float64)
        except ValueError:
            raise ValueError(f"box {text!r}: expected four numbers x1,y1,x2,y2") from None
    else:
        try:
            box = np.asarray(text, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"box {text!r}: expected four numbers x1,y1,x2,y2") from None
    if box.shape != (4,) or not np.isfinite(box).all():
        raise ValueError(f"box {text!r}: expected four finite numbers x1,y1,x2,y2")
    if box[2] < box[0] or box[3] < box[1]:
        raise ValueError(f"box {text!r}: needs x1 <= x2 and y1 <= y2")
    return box


def mask_box(mask: np.ndarray) -> np.ndarray:
    """The tight ``[x1, y1, x2, y2]`` (inclusive) of a non-empty ``(H, W)`` bool mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float64)


def object_box(photo_size: tuple[int, int], mask: np.ndarray | None = None, bbox: Any = None,
               name: str = "image") -> tuple[np.ndarray, str]:  # fmt: skip
    """The object's box in the photo and where it came from (:data:`BOX_SOURCES`).

    Raises:
        ValueError: naming ``name``: both a mask and a box, or a box that does not overlap the photo.
    """
    h, w = photo_size
    if mask is not None and bbox is not None:
        raise ValueError(f"{name}: give a mask or a box, not both")
    if mask is not None:
        return mask_box(mask), "mask"
    if bbox is not None:
        box = parse_bbox(bbox)
        if box[2] < 0 or box[3] < 0 or box[0] > w - 1 or box[1] > h - 1:
            raise ValueError(
                f"{name}: box {box.tolist()} lies outside the {w}x{h} image (0-based pixels x1,y1,x2,y2, inclusive)"
            )
        return box, "bbox"
    return np.array([0.0, 0.0, w - 1.0, h - 1.0]), "whole image"


def crop_photo(photo: np.ndarray, box: np.ndarray, size: int, padding_frac: float, source: str) -> PhotoCrop:
    """Pad ``box`` by ``padding_frac`` of its size on each side, square it, cut it out of ``photo`` (white
    outside) and resize to ``size``² (see the module docstring; :func:`slopekp.data.transforms.crop_resize`, whose
    memory is ``size``², however large the box)."""
    padded = T.perturb_bbox(box, padding_frac, 0.0, None)
    square = T.square_bbox(padded)
    side = int(square[2] - square[0] + 1)
    affine = T.crop_affine(square).then(T.resize_affine(side, size))
    image = T.crop_resize(photo, affine, size, fill=1.0)
    return PhotoCrop(np.clip(image, 0.0, 1.0), square, affine, (photo.shape[0], photo.shape[1]), source)
