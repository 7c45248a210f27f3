"""Figure helpers drawn with NumPy and PIL, and the two matplotlib helpers every report uses (:func:`pyplot`,
:func:`save_figure`).

Every function takes images as ``(H, W, 3)`` or ``(3, H, W)`` float arrays/tensors in [0, 1] or
``(H, W, 3)`` uint8 arrays, and returns a new ``(H, W, 3)`` uint8 RGB array (inputs are never modified).
Points are 0-based pixel coordinates ``(u, v)`` = (column, row).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from slopekp.data.matfiles import check_mask_matches_image, read_cub_cleaned, read_image
from slopekp.utils import atomic_write

#: Distinct colours for the 15 CUB keypoints (RGB), in CUB part order.
KEYPOINT_COLORS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
)  # fmt: skip


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def to_uint8(img) -> np.ndarray:
    """``(H, W, 3)``, ``(3, H, W)`` or ``(H, W)`` float in [0, 1] (array or tensor), or uint8, to an
    ``(H, W, 3)`` uint8 array.

    Channels-first input is recognised by a leading dimension of 3 whose last dimension is not 3. Floats
    are clipped to [0, 1] and rounded. Raises ``ValueError`` for other shapes or non-finite values.
    """
    a = _np(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3:
        raise ValueError(f"image must be (H, W, 3), (3, H, W) or (H, W), got shape {a.shape}")
    if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] != 3:
        raise ValueError(f"image must have 3 channels, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.copy()
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("image contains non-finite values")
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def _mask_np(mask, shape: tuple[int, int]) -> np.ndarray:
    m = _np(mask).astype(np.float64)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match the image size {shape}")
    return m


def make_grid(images: list[np.ndarray], ncols: int, pad: int = 2, bg: int = 255) -> np.ndarray:
    """Tile images (any accepted by :func:`to_uint8`; sizes may differ) row by row into an ``(H, W, 3)``
    uint8 grid.

    Each cell is as large as the largest image; images sit in the top-left corner of their cell, and
    ``pad`` pixels of colour ``bg`` separate the cells and frame the grid.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if ncols <= 0:
        raise ValueError(f"ncols must be positive, got {ncols}")
    tiles = [to_uint8(im) for im in images]
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    nrows = (len(tiles) + ncols - 1) // ncols
    ncols = min(ncols, len(tiles))
    out = np.full((nrows * (ch + pad) + pad, ncols * (cw + pad) + pad, 3), bg, dtype=np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y, x = pad + r * (ch + pad), pad + c * (cw + pad)
        out[y : y + t.shape[0], x : x + t.shape[1]] = t
    return out


def mask_outline(mask, threshold: float = 0.5) -> np.ndarray:
    """mask: (H, W) -> (H, W) bool, True on mask pixels with a 4-neighbour outside (or on the border)."""
    m = _np(mask) > threshold
    p = np.pad(m, 1, constant_values=False)
    interior = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def overlay_mask_outline(img, mask, color=(255, 0, 0), threshold: float = 0.5) -> np.ndarray:
    """Draw the boundary of ``mask > threshold`` (mask (H, W)) over ``img`` in ``color``."""
    out = to_uint8(img)
    edge = mask_outline(_mask_np(mask, out.shape[:2]), threshold)
    out[edge] = np.asarray(color, dtype=np.uint8)
    return out


def overlay_mask(img, mask, color=(255, 0, 0), alpha: float = 0.4) -> np.ndarray:
    """Blend ``color`` over ``img`` with weight ``alpha·mask`` (mask (H, W) soft in [0, 1])."""
    out = to_uint8(img).astype(np.float64)
    w = alpha * np.clip(_mask_np(mask, out.shape[:2]), 0, 1)[..., None]
    out = (1 - w) * out + w * np.asarray(color, dtype=np.float64)
    return np.round(out).astype(np.uint8)


def draw_points(img, points_px, visible=None, colors=None, radius: int = 2) -> np.ndarray:
    """Draw filled circles with a dark outline at ``points_px`` (K, 2) pixel ``(u, v)``.

    ``visible`` (K,) bool or 0/1 selects the points drawn (default all); ``colors`` is a list of RGB
    triples (default :data:`KEYPOINT_COLORS`, cycled).
    """
    out = Image.fromarray(to_uint8(img))
    pts = _np(points_px).astype(np.float64)
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ValueError(f"points_px must be (K, 2), got shape {pts.shape}")
    vis = np.ones(len(pts), bool) if visible is None else np.asarray(visible).reshape(-1) > 0
    colors = colors or KEYPOINT_COLORS
    d = ImageDraw.Draw(out)
    for k, (u, v) in enumerate(pts[:, :2]):
        if vis[k] and np.isfinite(u) and np.isfinite(v):
            c = tuple(int(x) for x in colors[k % len(colors)])
            d.ellipse([u - radius, v - radius, u + radius, v + radius], fill=c, outline=(0, 0, 0))
    return np.asarray(out).copy()


def draw_text(img, text: str, xy=(2, 2), color=(255, 255, 255)) -> np.ndarray:
    """Write ``text`` at pixel ``xy`` with PIL's default font, over a dark shadow for legibility."""
    out = Image.fromarray(to_uint8(img))
    d = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    x, y = xy
    d.text((x + 1, y + 1), text, fill=(0, 0, 0), font=font)
    d.text((x, y), text, fill=tuple(int(c) for c in color), font=font)
    return np.asarray(out).copy()


def histogram_image(values, bins: int = 20, range=None, title: str = "", size=(320, 240)) -> np.ndarray:  # noqa: A002
    """A bar chart of ``values`` (any shape, flattened; NaN dropped) as an ``(H, W, 3)`` uint8 image.

    ``size`` is ``(W, H)``. The x range (``range``, default min..max) is written under the axis, the
    largest count after the title.
    """
    v = _np(values).astype(np.float64).ravel()
    v = v[np.isfinite(v)]
    if bins <= 0:
        raise ValueError(f"bins must be positive, got {bins}")
    w, h = size
    if v.size:
        counts, edges = np.histogram(v, bins=bins, range=range)
    else:
        counts, edges = np.zeros(bins), np.linspace(0, 1, bins + 1)
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 8, w - 8, 18, h - 18
    d.line([left, bottom, right, bottom], fill=(0, 0, 0))
    peak = max(float(counts.max()), 1.0)
    bw = (right - left) / bins
    for i, c in enumerate(counts):
        x0 = left + i * bw
        y0 = bottom - (bottom - top) * float(c) / peak
        d.rectangle([x0 + 1, y0, x0 + bw - 1, bottom], fill=(70, 110, 190))
    font = ImageFont.load_default()
    d.text((left, 2), f"{title}  (n={v.size}, max {int(peak)})".strip(), fill=(0, 0, 0), font=font)
    d.text((left, bottom + 3), f"{edges[0]:.3g}", fill=(0, 0, 0), font=font)
    lbl = f"{edges[-1]:.3g}"
    d.text((right - 6 * len(lbl), bottom + 3), lbl, fill=(0, 0, 0), font=font)
    return np.asarray(im).copy()


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib  # slow to import, and the backend must be chosen before pyplot: only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write a matplotlib figure as PNG atomically and close it."""

    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())


def save_image(path: str | os.PathLike, im: Image.Image, format: str = "PNG", **options) -> None:  # noqa: A002
    """Write a Pillow image atomically (``options`` go to ``Image.save``, e.g. ``save_all=True`` for a GIF)."""
    with atomic_write(path, "wb") as f:
        im.save(f, format=format, **options)


def save_png(path: str | os.PathLike, img) -> None:
    """Write ``img`` (anything :func:`to_uint8` accepts) as an RGB PNG, atomically."""
    save_image(path, Image.fromarray(to_uint8(img)), optimize=True)


def contact_sheet(root: str | os.PathLike, n: int = 24, split: str = "train", ncols: int = 6) -> np.ndarray:
    """A grid of the first ``n`` images of a CMR-format dataset (``root/<split>_cub_cleaned.mat`` +
    ``root/images/``) with the mask outline (red) and the visible keypoints (CUB colours), as an
    ``(H, W, 3)`` uint8 image.

    Raises:
        ValueError: ``n < 1``, or the dataset's files are missing or malformed (naming the file).
    """

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    root = Path(root)
    records = read_cub_cleaned(root / f"{split}_cub_cleaned.mat")[:n]
    tiles = []
    for r in records:
        path = root / "images" / r.rel_path
        img = read_image(path)
        check_mask_matches_image(r.mask, img, path)
        tile = overlay_mask_outline(img, r.mask, color=(255, 30, 30))
        tiles.append(draw_points(tile, r.parts[:2].T - 1.0, visible=r.parts[2] > 0, radius=2))
    return make_grid(tiles, ncols=ncols)
