"""The depth mirror of each pose target, chosen by a shared appearance (slopekp's addition; not in U-CMR or SLOPE-KP).

A silhouette cannot tell a camera from its depth mirror (:func:`~slopekp.geometry.camera.depth_mirror_cameras`,
METHOD §2.3): for a mirror-symmetric shape both project it to the same mask, one showing the surface the other hides
(the back against the belly, the head against the tail). Scored by the mask, each such pair is a tie, and about a
third of the multiplex's best cameras end up on the wrong side (docs/training.md). The pair differs in what it
shows, so appearance can break the tie. Per image, it cannot: a free texture explains either pose. Across the data
set it can, because a category has a typical colouring (birds are countershaded: darker above, lighter below).

The model, fitted to the whole training set at once:
* each image's luminance inside its mask, minus its best linear trend over the image plane (directional light
  brightens one side of the image whatever the pose), standardised to mean 0 and variance 1;
* is predicted by one field over the template shared by every image, linear in the object coordinates
  ``a₀ + a·X`` of the visible surface point (the point rendered at that pixel with the hard z-buffer).

Alternating (the fixed point of a two-class EM with hard assignments): fit ``a`` by least squares to every image
under its current choice, then give each image the camera of its pair with the smaller residual; until no choice
changes. Two starts (every best camera; every mirror) and the solution with the smaller total residual is kept.
Everything is linear algebra on per-image, per-camera sufficient statistics (4 × 4), so rounds are free and one
hard render of two cameras per image is all the rendering.

Measured on SynthBirds (2,000 training images of random shapes and textures; docs/training.md): among the images
whose pair differs by more than 30° and whose better camera is within 30° of the truth, the mask picks the right
side for about half (47–51%), this choice for about three quarters (73–75%).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from slopekp.data.cub import collate_samples
from slopekp.geometry.camera import depth_mirror_cameras
from slopekp.train.multiplex import split_image_ids
from slopekp.train.stage2 import resize_targets

__all__ = ["MirrorChoice", "choose_depth_mirrors", "fit_mirror_choice", "pair_statistics", "surface_basis"]

#: ITU-R BT.601 luma weights
_LUMA = (0.299, 0.587, 0.114)


@dataclass
class MirrorChoice:
    """Which camera of each image's (best, depth mirror) pair the shared appearance prefers."""

    mirrored: Tensor
    """``(N,)`` bool: take the depth mirror of the best camera."""
    residual: Tensor
    """``(N, 2)`` mean squared residual of the appearance model under (best, mirror)."""
    coefficients: Tensor
    """``(D,)`` the fitted field ``a`` over :func:`surface_basis`."""
    rounds: int
    """Alternations until no choice changed (of the kept start)."""

    def summary(self) -> dict:
        return {
            "mirrored_share": float(self.mirrored.float().mean()) if self.mirrored.numel() else 0.0,
            "num_images": int(self.mirrored.numel()),
            "rounds": self.rounds,
            "coefficients": [round(float(c), 4) for c in self.coefficients],
            "mean_residual": float(self.residual.min(1).values.mean()) if self.mirrored.numel() else 0.0,
        }


def surface_basis(verts: Tensor) -> Tensor:
    """``(V, 4)``: ``[1, x, y, z]`` of the template vertices, centred and scaled to a unit box (linear fields)."""
    v = verts - verts.mean(0)
    v = v / v.abs().amax().clamp_min(1e-8)
    return torch.cat([torch.ones_like(v[:, :1]), v], dim=1)


def _standardised_luminance(img: Tensor, mask: Tensor) -> Tensor:
    """``img (B, 3, S, S)`` in [0, 1], ``mask (B, S, S)`` → ``(B, S, S)`` luminance inside the mask, its least-squares
    plane over the pixel coordinates removed, scaled to unit variance (0 outside the mask)."""
    b, _, s, _ = img.shape
    lum = (img * img.new_tensor(_LUMA)[:, None, None]).sum(1)
    m = (mask > 0.5).to(img.dtype)
    u = torch.linspace(-1.0, 1.0, s, dtype=img.dtype, device=img.device)
    plane = torch.stack([torch.ones(s, s, dtype=img.dtype, device=img.device), u[:, None].expand(s, s),
                         u[None, :].expand(s, s)], -1)  # fmt: skip
    xm = plane[None] * m[..., None]  # (B, S, S, 3)
    gram = torch.einsum("bijd,bije->bde", xm, xm) + 1e-6 * torch.eye(3, dtype=img.dtype, device=img.device)
    beta = torch.linalg.solve(gram, torch.einsum("bijd,bij->bd", xm, lum))
    res = (lum - torch.einsum("ijd,bd->bij", plane, beta)) * m
    var = (res * res).sum((1, 2)) / m.sum((1, 2)).clamp_min(1.0)
    return res / var.sqrt().clamp_min(1e-3)[:, None, None]


@torch.no_grad()
def pair_statistics(
    img: Tensor, mask: Tensor, cameras: Tensor, verts: Tensor, faces: Tensor, renderer
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sufficient statistics of the appearance model for each image and camera.

    Args:
        img: ``(B, 3, S, S)`` RGB in [0, 1]; mask: ``(B, S, S)``; both at the renderer's size.
        cameras: ``(B, K, 7)`` the cameras to compare per image (here K = 2: best, mirror).
        verts: ``(V, 3)`` template; faces: ``(F, 3)``; renderer: a :class:`~slopekp.render.Renderer`.

    Returns:
        ``gram (B, K, D, D)``, ``cross (B, K, D)``, ``yy (B, K)``, ``n (B, K)``: over the pixels inside both the
        mask and the rendered silhouette, ``Σ φφᵀ``, ``Σ φ·y``, ``Σ y²`` and their number, where ``φ`` is the
        :func:`surface_basis` at the visible surface point and ``y`` the standardised luminance.
    """
    y = _standardised_luminance(img, mask)
    out = renderer(verts, faces, cameras, mode="hard")
    fi, bary = out.face_index, out.bary  # (B, K, S, S), (B, K, S, S, 3)
    phi = surface_basis(verts).to(bary.dtype)
    feat = (bary[..., None] * phi[faces[fi.clamp(min=0)]]).sum(-2)  # (B, K, S, S, D)
    valid = ((fi >= 0) & (mask > 0.5)[:, None]).to(feat.dtype)
    fw = feat * valid[..., None]
    gram = torch.einsum("bkijd,bkije->bkde", fw, feat)
    cross = torch.einsum("bkijd,bij->bkd", fw, y)
    yy = torch.einsum("bkij,bij->bk", valid, y * y)
    return gram, cross, yy, valid.sum((2, 3))


def fit_mirror_choice(
    gram: Tensor, cross: Tensor, yy: Tensor, n: Tensor, *, max_rounds: int = 100, ridge: float = 1e-3,
    tie: float = 1e-4,
) -> MirrorChoice:
    """The alternating fit of the module docstring on :func:`pair_statistics` of ``(best, mirror)`` pairs
    (``K = 2``; index 1 is the mirror). Residuals are per pixel of standardised luminance (about 1 for no fit);
    the mirror is taken when its residual is lower by more than ``tie``. Deterministic."""
    if gram.dim() != 4 or gram.shape[1] != 2:
        raise ValueError(f"expected statistics of (best, mirror) pairs, gram (N, 2, D, D); got {tuple(gram.shape)}")
    num, _, d, _ = gram.shape
    g64, c64, yy64, n64 = (t.double() for t in (gram, cross, yy, n))
    rows = torch.arange(num, device=gram.device)
    eye = torch.eye(d, dtype=torch.float64, device=gram.device)
    best = None
    for start in (0, 1):
        z = torch.full((num,), start, dtype=torch.long, device=gram.device)
        rounds = 0
        while rounds < max_rounds:
            rounds += 1
            a = torch.linalg.solve(g64[rows, z].sum(0) + ridge * eye * max(num, 1), c64[rows, z].sum(0))
            res = (torch.einsum("d,bkde,e->bk", a, g64, a) - 2 * c64 @ a + yy64) / n64.clamp_min(1.0)
            # the mirror only when it explains clearly better (ties, e.g. an image without contrast or a pair
            # without pixels, keep the best camera)
            z_new = ((res[:, 1] < res[:, 0] - tie) & (n64.min(1).values > 0)).long()
            changed = bool((z_new != z).any())
            z = z_new
            if not changed:
                break
        total = float(res.gather(1, z[:, None]).sum())
        if best is None or total < best[0] - 1e-9:
            best = (total, z, res, a, rounds)
    _, z, res, a, rounds = best
    return MirrorChoice(mirrored=z.bool(), residual=res.float(), coefficients=a.float(), rounds=rounds)


@torch.no_grad()
def choose_depth_mirrors(
    store, dataset, verts: Tensor, faces: Tensor, renderer, *, batch_size: int = 64, device=None
) -> tuple[Tensor, MirrorChoice]:
    """:func:`fit_mirror_choice` for every image of ``dataset`` against ``store``'s best cameras.

    Args:
        store: a :class:`~slopekp.train.multiplex.CameraMultiplex` holding every image of ``dataset``.
        dataset: unaugmented training crops (``build_train_dataset(..., augment=False)``: no flip, no jitter); they
            are resized to the renderer's size.
        verts, faces: the template; renderer: a hard-mode capable :class:`~slopekp.render.Renderer`.

    Returns:
        ``(ids (N,), choice)``: the images' ids and the :class:`MirrorChoice` in the same order.
    """


    size = renderer.settings.hw[0]
    stats, ids = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples):
        if bool(split_image_ids(batch.id).flipped.any()):
            raise ValueError("choose_depth_mirrors needs unflipped crops (a data set built with augment=False)")
        batch = batch.to(device) if device is not None else batch
        img, mask, _ = resize_targets(batch, size)
        best = store.best_cameras(batch.id, batch.crop).to(img.device)
        pair = torch.stack([best, depth_mirror_cameras(best)], 1)
        stats.append(pair_statistics(img, mask, pair, verts, faces, renderer))
        ids.append(batch.id.cpu())
    if not stats:
        raise ValueError("choose_depth_mirrors: the data set is empty")
    gram, cross, yy, n = (torch.cat(t) for t in zip(*stats))
    return torch.cat(ids), fit_mirror_choice(gram, cross, yy, n)
