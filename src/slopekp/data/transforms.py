"""Pure geometric transforms of the CUB loader (METHOD §1.2): bbox perturbation, square, crop, resize, flip.

Conventions (binding, see ``docs/conventions.md``):

* Pixel coordinates are **0-based**: column ``u``, row ``v``; pixel ``(v, u)`` holds the image content
  at ``(u, v)``.
* Boxes are ``(4,)`` float arrays ``[x1, y1, x2, y2]``, 0-based and **inclusive** (width ``x2 − x1 + 1``).
* Keypoints are ``(K, 3)`` arrays ``[u, v, visible]``; invisible rows are kept but never moved by meaning.
* Every image-space operation is an isotropic affine map of pixel coordinates ``u' = k·u + o``
  (:class:`PixelAffine`). Keypoints and weak-perspective cameras in pixel units move through the *same*
  map, so projecting a shape with the transformed camera lands on the transformed keypoints exactly:

  - crop at ``(x1, y1)``: ``k = 1``, ``o = −(x1, y1)``;
  - resize of a square side ``n`` to ``m`` pixels with OpenCV bilinear interpolation, which aligns
    pixel *centres*: ``k = m/n``, ``o = (k − 1)/2`` (CMR uses ``o = 0``, off by ``(k − 1)/2`` px; we
    are exact);
  - horizontal flip of a width-``W`` image: ``u' = W − 1 − u`` (not isotropic; handled by
    :func:`flip_keypoints` and :func:`slopekp.geometry.camera.reflect_camera_px`).

* To NDC of a square image of side ``W``: ``x = 2u/W − 1`` (y likewise, y down).

Images are float32 ``(H, W, C)`` arrays (``C`` = 3 for RGB, or ``(H, W)`` masks).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

#: Left/right keypoint permutation applied on horizontal flip (CUB part order; swaps eyes, legs, wings).
KP_FLIP_PERM = np.array([0, 1, 2, 3, 4, 5, 10, 11, 12, 9, 6, 7, 8, 13, 14])


class PixelAffine(NamedTuple):
    """The isotropic map ``u' = k·u + ox``, ``v' = k·v + oy`` of 0-based pixel coordinates."""

    k: float
    ox: float
    oy: float

    def then(self, other: PixelAffine) -> PixelAffine:
        """The composition "first ``self``, then ``other``"."""
        return PixelAffine(other.k * self.k, other.k * self.ox + other.ox, other.k * self.oy + other.oy)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """points: (..., 2) pixel coordinates -> (..., 2)."""
        points = np.asarray(points, dtype=np.float64)
        return points * self.k + np.array([self.ox, self.oy])


IDENTITY = PixelAffine(1.0, 0.0, 0.0)


def perturb_bbox(
    bbox: np.ndarray, padding_frac: float, jitter_frac: float, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Pad each side of ``bbox`` by ``padding_frac·w`` (``·h`` vertically) and jitter it by
    ``U(−1, 1)·jitter_frac·w``.

    bbox: (4,) ``[x1, y1, x2, y2]`` 0-based inclusive; ``w = x2 − x1 + 1``, ``h = y2 − y1 + 1``.
    ``rng=None`` (or ``jitter_frac = 0``) means no jitter. Returns a new (4,) float64 box (not rounded).
    """
    if padding_frac < 0 or jitter_frac < 0:
        raise ValueError(f"padding_frac and jitter_frac must be >= 0, got {padding_frac}, {jitter_frac}")
    x1, y1, x2, y2 = np.asarray(bbox, dtype=np.float64)
    w, h = x2 - x1 + 1, y2 - y1 + 1
    size = np.array([w, h, w, h])
    out = np.array([x1, y1, x2, y2]) + np.array([-1, -1, 1, 1]) * padding_frac * size
    if rng is not None and jitter_frac > 0:
        out = out + rng.uniform(-1.0, 1.0, size=4) * jitter_frac * size
    return out


def square_bbox(bbox: np.ndarray) -> np.ndarray:
    """Round ``bbox`` to integers and grow its shorter side symmetrically to the longer one (CMR
    ``square_bbox``).

    Returns (4,) float64 integer-valued ``[x1, y1, x2, y2]`` with ``x2 − x1 == y2 − y1``.
    """
    x1, y1, x2, y2 = np.round(np.asarray(bbox, dtype=np.float64))
    w, h = x2 - x1 + 1, y2 - y1 + 1
    side = max(w, h)
    x1 -= np.round((side - w) / 2)  # round half to even, like CMR's Python ``round``
    y1 -= np.round((side - h) / 2)
    return np.array([x1, y1, x1 + side - 1, y1 + side - 1])


def crop(img: np.ndarray, bbox: np.ndarray, fill: float) -> np.ndarray:
    """Crop the integer box ``bbox`` out of ``img`` (H, W[, C]); pixels outside the image get ``fill``.

    Returns (y2 − y1 + 1, x2 − x1 + 1[, C]) of ``img``'s dtype. The pixel map is :func:`crop_affine`.
    """
    x1, y1, x2, y2 = (int(round(float(v))) for v in bbox)
    if x2 < x1 or y2 < y1:
        raise ValueError(f"crop box {list(bbox)} is empty")
    h, w = img.shape[:2]
    out = np.full((y2 - y1 + 1, x2 - x1 + 1) + img.shape[2:], fill, dtype=img.dtype)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w - 1), min(y2, h - 1)
    if sx1 <= sx2 and sy1 <= sy2:
        out[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = img[sy1 : sy2 + 1, sx1 : sx2 + 1]
    return out


def crop_affine(bbox: np.ndarray) -> PixelAffine:
    """The pixel map of :func:`crop` with this box: ``u' = u − x1``."""
    return PixelAffine(1.0, -float(round(float(bbox[0]))), -float(round(float(bbox[1]))))


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a square ``img`` (n, n[, C]) to (size, size[, C]) with OpenCV bilinear interpolation (float32
    out)."""
    if img.shape[0] != img.shape[1]:
        raise ValueError(f"resize_square needs a square image, got {img.shape[:2]}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    out = cv2.resize(
        np.ascontiguousarray(img, dtype=np.float32), (size, size), interpolation=cv2.INTER_LINEAR
    )
    return out.reshape((size, size) + img.shape[2:])


def resize_affine(src_size: int, dst_size: int) -> PixelAffine:
    """The pixel map of a bilinear resize from side ``src_size`` to ``dst_size`` (pixel centres aligned)."""
    k = dst_size / src_size
    return PixelAffine(k, (k - 1) / 2, (k - 1) / 2)


def crop_resize(img: np.ndarray, affine: PixelAffine, size: int, fill: float) -> np.ndarray:
    """``resize_square(crop(img, box, fill), size)`` in one bilinear warp, for the ``affine`` of that crop and
    resize (``crop_affine(box).then(resize_affine(side, size))``): memory ``size``², not ``side``², so a box far
    larger than the image costs nothing. Equal to the two steps up to OpenCV's 1/32-pixel interpolation weights
    (and, at the box's own edge when enlarging, the fill instead of the edge pixel).

    Returns ``(size, size[, C])`` float32.
    """
    m = np.array([[affine.k, 0.0, affine.ox], [0.0, affine.k, affine.oy]], dtype=np.float64)
    src = np.ascontiguousarray(img, dtype=np.float32)
    channels = src.shape[2] if src.ndim == 3 else 1
    out = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(fill,) * min(channels, 4))  # fmt: skip
    return out.reshape((size, size) + img.shape[2:])


def paste_crop(crop_img: np.ndarray, affine: PixelAffine, out_size: tuple[int, int]) -> np.ndarray:
    """Put a crop back into the frame it was cut from: the inverse of ``affine`` (frame pixels → crop pixels, e.g.
    ``crop_affine(box).then(resize_affine(side, size))``), bilinear.

    Args:
        crop_img: ``(h, w)`` or ``(h, w, C)`` float image in crop pixels (a rendered mask, say).
        affine: the map from frame pixels to ``crop_img``'s pixels.
        out_size: ``(H, W)`` of the frame.

    Returns:
        ``(H, W[, C])`` float32; frame pixels that the crop does not cover are 0.
    """
    h, w = int(out_size[0]), int(out_size[1])
    m = np.array([[affine.k, 0.0, affine.ox], [0.0, affine.k, affine.oy]], dtype=np.float64)
    out = cv2.warpAffine(np.ascontiguousarray(crop_img, dtype=np.float32), m, (w, h),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)  # fmt: skip
    return out.reshape((h, w) + np.shape(crop_img)[2:])


def flip_image(img: np.ndarray) -> np.ndarray:
    """Mirror ``img`` (H, W[, C]) about its vertical axis (reverse the columns)."""
    return np.ascontiguousarray(img[:, ::-1])


def transform_keypoints(kp: np.ndarray, affine: PixelAffine) -> np.ndarray:
    """kp: (K, 3) ``[u, v, vis]`` -> (K, 3) with ``u, v`` mapped by ``affine`` (visibility unchanged)."""
    kp = np.asarray(kp, dtype=np.float64).copy()
    kp[:, :2] = affine.apply(kp[:, :2])
    return kp


def flip_keypoints(kp: np.ndarray, width: int, perm: np.ndarray = KP_FLIP_PERM) -> np.ndarray:
    """Keypoints of the mirrored image: ``u' = width − 1 − u``, then the left/right permutation ``perm``.

    kp: (K, 3) 0-based ``[u, v, vis]``; ``perm``: (K,) (default :data:`KP_FLIP_PERM` for the 15 CUB parts).
    """
    kp = np.asarray(kp, dtype=np.float64).copy()
    kp[:, 0] = width - 1 - kp[:, 0]
    return kp[perm]


def clip_keypoints(kp: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip the coordinates of visible keypoints (K, 3) to ``[0, width − 1] × [0, height − 1]`` (as CMR
    does)."""
    kp = np.asarray(kp, dtype=np.float64).copy()
    vis = kp[:, 2] > 0
    kp[vis, 0] = np.clip(kp[vis, 0], 0, width - 1)
    kp[vis, 1] = np.clip(kp[vis, 1], 0, height - 1)
    return kp


def keypoints_to_ndc(kp: np.ndarray, size: int) -> np.ndarray:
    """kp: (K, 3) 0-based pixels of a square image of side ``size`` -> (K, 3) NDC ``2u/size − 1``; invisible
    rows 0."""
    kp = np.asarray(kp, dtype=np.float64).copy()
    vis = kp[:, 2] > 0
    kp[:, :2] = 2.0 * kp[:, :2] / size - 1.0
    kp[~vis] = 0.0
    kp[vis, 2] = 1.0
    return kp


def crop_to_ndc_params(affine: PixelAffine, size: int) -> np.ndarray:
    """The ``[a, bx, by]`` map from original 0-based pixels to the NDC of the final (size×size) image.

    ``ndc = a·u + b`` with ``a = 2k/size`` and ``b = 2o/size − 1`` (this is ``Sample.crop``).
    """
    a = 2.0 * affine.k / size
    return np.array([a, 2.0 * affine.ox / size - 1.0, 2.0 * affine.oy / size - 1.0])
