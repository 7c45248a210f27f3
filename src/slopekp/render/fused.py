"""The soft silhouette and the soft RGB pairs in Triton kernels: a few launches per render instead of the
candidate-pair path's thousands of small ones (issue 13; docs/gpu.md).

**Status: built and tested under Triton's interpreter only** (``TRITON_INTERPRET=1`` on the CPU, against
:func:`slopekp.render.rasterize.soft_rasterize` on values and gradients; compiled for sm_90 without a GPU). It
has not been timed on a GPU, so it is off by default: ``RenderSettings(fused="never")``. ``fused="always"``
forces it (CUDA, or the interpreter); ``fused="auto"`` uses it on CUDA when Triton imports and a self-check
against the pure-PyTorch path passes at first use (:func:`fused_available`; a failure warns and falls back). The
pure-PyTorch path stays the reference and the CPU path. The hard z-buffer has no fused path.

Kernels (the same maths as ``soft.py``, which documents it): one program per image and ``TILE × TILE``
pixel tile. It walks the image's faces in chunks of ``FB``; a chunk none of whose faces' windows (bounding box
grown by the cut-off radius) touch the tile is skipped after loading its windows, and the others are evaluated
as a dense ``(pixels, FB)`` block: the signed distance to the triangle, the cut-off and the ``[near, far]`` test
on the clamped-barycentric depth, then ``sum log(1 - D)``. The backward program recomputes the same block
(nothing is stored between the passes) and adds each face's corner gradients ``-2 Σ c·β_v·(p − q)`` with
atomics. The RGB pairs (:class:`_FusedPairs`): the forward kernel also counts each tile's kept pairs, a second
pass writes them at the tiles' running offsets, and the backward adds one lane per pair. Work is ``N · tiles ·
F/FB`` chunk tests plus the dense blocks of the chunks that touch a tile; docs/gpu.md has the measured share of
useful work in those blocks, and the binning that would raise it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from slopekp.config import CHOICES
from slopekp.mesh import icosphere
from slopekp.render.plan import SilhouettePairs, face_tensors, face_windows, soft_cutoff_radius
from slopekp.render.soft import soft_pairs
from slopekp.utils import first_line

__all__ = ["FUSED_MODES", "check_fused_mode", "fused_available", "fused_soft_pairs", "fused_soft_silhouette",
           "triton_available"]  # fmt: skip

FUSED_MODES = CHOICES["render.fused"]
"""``never``, ``auto``, ``always``: the modes of ``RenderSettings.fused`` and ``render.fused`` (declared once, in
:data:`slopekp.config.CHOICES`)."""


def check_fused_mode(mode: str) -> None:
    """Raise ValueError unless ``mode`` is one of :data:`FUSED_MODES` (the one check of a mode given in code)."""
    if mode not in FUSED_MODES:
        raise ValueError(f"RenderSettings.fused must be one of {', '.join(FUSED_MODES)}, got {mode!r}")
TILE = 8
FACE_BLOCK = 32
PAIR_BLOCK = 256
#: Launch options of the tile kernels: 8 warps keep the float32 kernels within the register file (4 spilled in the
#: backward and the pair fill, compiled for sm_90 without a GPU); no floating-point contraction, so that the pair
#: counting pass and the pair fill keep exactly the same pairs (the same operations, rounded alike).
TILE_LAUNCH = {"num_warps": 8, "enable_fp_fusion": False}


@functools.cache
def triton_available() -> bool:
    """Triton imports (it ships with PyTorch's CUDA builds; ``pip install triton`` for the interpreter)."""
    try:
        import triton  # noqa: F401 -- optional: probed here, not needed by the pure-PyTorch path
    except Exception:  # noqa: BLE001 -- any import failure means: not available
        return False
    return True


def interpreting() -> bool:
    """Triton's interpreter is on (``TRITON_INTERPRET=1``): kernels run on the CPU, for tests."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _kernels():
    from slopekp.render import _triton_kernels  # imports Triton (optional): loaded at the first launch only

    return _triton_kernels


def _face_data(fxy: Tensor, fz: Tensor, area2: Tensor, height: int, width: int, radius: float, near: float,
               far: float, double_sided: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``table (10, G)``: corner x (3), y (3), depth (3), ``1/A``; ``windows (4, G)`` int32: the pixel window
    ``col0, col1, row0, row1`` of each live face (bounding box grown by ``radius``); ``col1 = row1 = -1`` for dead
    faces (zero area, wholly outside ``[near, far]``, culled, or off the image)."""
    with torch.no_grad():
        col0, col1, row0, row1, live, _ = face_windows(fxy, fz, area2, height=height, width=width, radius=radius,
                                                       near=near, far=far, double_sided=double_sided)  # fmt: skip
        # a dead face (face_windows' live includes a non-empty window): col1 = row1 = -1, below every tile (an
        # empty interval [col0, col0 - 1] would still pass the kernel's overlap test against a tile holding col0)
        dead = ~(live & torch.isfinite(area2))
        col1 = torch.where(dead, -1.0, col1)
        row1 = torch.where(dead, -1.0, row1)
        windows = torch.stack([col0, col1, row0, row1]).to(torch.int32).contiguous()
        inv_a = torch.where(area2 != 0, 1.0 / torch.where(area2 != 0, area2, torch.ones_like(area2)), 0.0)
        table = torch.cat([fxy[0], fxy[1], fz, inv_a[None]]).contiguous()
    return table, windows


class _FusedSilhouette(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fxy, fz, area2, n_images, height, width, sigma, radius, near, far, double_sided):
        table, windows = _face_data(fxy.detach(), fz.detach(), area2.detach(), height, width, radius, near, far,
                                    double_sided)  # fmt: skip
        G = table.shape[1]
        out = table.new_empty(n_images * height * width)
        with _on(table.device):
            _kernels().silhouette_forward[_grid(n_images, height, width)](
                table, windows, out, out, G, G // n_images, height, width, radius * radius, 1.0 / sigma, near, far,
                TILE=TILE, FB=FACE_BLOCK, COUNT=False, **TILE_LAUNCH)  # fmt: skip
        ctx.save_for_backward(table, windows)
        ctx.args = (n_images, height, width, radius, sigma, near, far)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        table, windows = ctx.saved_tensors
        grad = table.new_zeros(table.shape[1], 3, 2)
        _silhouette_backward(table, windows, grad_out, grad, *ctx.args)
        return grad.permute(2, 1, 0).contiguous(), None, None, None, None, None, None, None, None, None, None


def _grid(n_images: int, height: int, width: int) -> tuple[int, int, int]:
    """One program per image and ``TILE × TILE`` pixel tile."""
    return n_images, triton_cdiv(height, TILE), triton_cdiv(width, TILE)


def _silhouette_backward(table, windows, grad_log_t, grad, n_images, height, width, radius, sigma, near, far):
    """Add the silhouette's corner gradients ``(G, 3, 2)`` for ``dL/dlog_t`` to ``grad``."""
    G = table.shape[1]
    with _on(table.device):
        _kernels().silhouette_backward[_grid(n_images, height, width)](
            table, windows, grad_log_t.contiguous(), grad, G, G // n_images, height, width, radius * radius,
            1.0 / sigma, near, far, TILE=TILE, FB=FACE_BLOCK, **TILE_LAUNCH)  # fmt: skip


def _on(device: torch.device):
    """Launch on ``device``: Triton launches on the current CUDA device, not on the tensors'."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class _FusedPairs(torch.autograd.Function):
    """The silhouette and the kept pairs (:class:`slopekp.render.rasterize.SoftPairs`) for the RGB aggregation.

    Forward: the silhouette kernel also counts each tile's kept pairs; their running sum gives each tile its
    first slot, and a second pass writes the pairs there (the one host synchronisation: the pair tensors' size).
    Backward: the silhouette's tile kernel for ``dL/dlog_t``, and one lane per pair for ``dL/dD``, ``dL/dbary``
    and ``dL/ddepth`` (:func:`~slopekp.render._triton_kernels.pairs_backward`).
    """

    @staticmethod
    def forward(ctx, fxy, fz, area2, n_images, height, width, sigma, radius, near, far, double_sided):
        k = _kernels()
        table, windows = _face_data(fxy.detach(), fz.detach(), area2.detach(), height, width, radius, near, far,
                                    double_sided)  # fmt: skip
        G = table.shape[1]
        grid = _grid(n_images, height, width)
        log_t = table.new_empty(n_images * height * width)
        counts = torch.empty(grid[0] * grid[1] * grid[2], dtype=torch.int64, device=table.device)
        args = (G, G // n_images, height, width, radius * radius, 1.0 / sigma, near, far)
        with _on(table.device):
            k.silhouette_forward[grid](table, windows, log_t, counts, *args, TILE=TILE, FB=FACE_BLOCK, COUNT=True,
                                       **TILE_LAUNCH)  # fmt: skip
            ends = torch.cumsum(counts, 0)
            M = int(ends[-1])  # the host synchronisation: the pair tensors' size
            pix = torch.zeros(M, dtype=torch.int64, device=table.device)
            face = torch.full_like(pix, -1)  # -1: a slot left unwritten (never, when both passes keep alike)
            prob, depth = table.new_zeros(M), table.new_zeros(M)
            bary = table.new_zeros(3, M)
            if M:
                k.pairs_fill[grid](table, windows, ends, counts, pix, face, prob, bary, depth, M, *args, TILE=TILE,
                                   FB=FACE_BLOCK, **TILE_LAUNCH)  # fmt: skip
        ctx.save_for_backward(table, windows, pix, face)
        ctx.args = (n_images, height, width, radius, sigma, near, far)
        ctx.mark_non_differentiable(pix, face)
        return log_t, pix, face, prob, bary, depth

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_t, _pix, _face, grad_prob, grad_bary, grad_depth):
        table, windows, pix, face = ctx.saved_tensors
        n_images, height, width, radius, sigma, near, far = ctx.args
        G, M = table.shape[1], pix.shape[0]
        grad = table.new_zeros(G, 3, 2)
        grad_z = table.new_zeros(G, 3)
        grad_a = table.new_zeros(G)
        _silhouette_backward(table, windows, grad_log_t, grad, *ctx.args)
        if M:
            with _on(table.device):
                _kernels().pairs_backward[(triton_cdiv(M, PAIR_BLOCK),)](
                    table, pix, face, grad_prob.contiguous(), grad_bary.contiguous(), grad_depth.contiguous(), grad,
                    grad_z, grad_a, M, G, height, width, 1.0 / sigma, BLOCK=PAIR_BLOCK)  # fmt: skip
        return (grad.permute(2, 1, 0).contiguous(), grad_z.T.contiguous(), grad_a) + (None,) * 8


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fused_soft_silhouette(
    fxy: Tensor, fz: Tensor, area2: Tensor, *, n_images: int, height: int, width: int, sigma: float, eps: float,
    near: float, far: float, double_sided: bool = True,
) -> Tensor:
    """``sum_j log(1 - D_j)`` per pixel, ``(N·H·W,)``: :func:`slopekp.render.rasterize.soft_rasterize`'s
    silhouette from its face tensors (``fxy (2, 3, G)``, ``fz (3, G)``, ``area2 (G,)``; differentiable w.r.t.
    ``fxy``), in two Triton kernels (module docstring)."""
    radius = soft_cutoff_radius(sigma, eps)
    return _FusedSilhouette.apply(fxy, fz, area2, n_images, height, width, sigma, radius, near, far, double_sided)


def fused_soft_pairs(
    fxy: Tensor, fz: Tensor, area2: Tensor, *, n_images: int, height: int, width: int, sigma: float, eps: float,
    near: float, far: float, double_sided: bool = True,
) -> SilhouettePairs:
    """The silhouette ``(N·H·W,)`` and the kept pairs ``pix, face, prob (M,), bary (3, M), depth (M,)``, as
    :func:`slopekp.render.rasterize.soft_rasterize` with ``return_pairs`` forms them (pairs in another order:
    tile by tile), differentiable w.r.t. ``fxy``, ``fz`` and ``area2``, in three Triton kernels forward and two
    backward (:class:`_FusedPairs`)."""
    radius = soft_cutoff_radius(sigma, eps)
    return SilhouettePairs(*_FusedPairs.apply(fxy, fz, area2, n_images, height, width, sigma, radius, near, far,
                                              double_sided))  # fmt: skip


@functools.cache
def _self_check(device_type: str, index: int | None) -> bool:
    """The fused silhouette and pairs agree with the pure-PyTorch ones (values and gradients) on a small case on
    this device."""
    device = torch.device(device_type, index) if index is not None else torch.device(device_type)
    ico = icosphere(1)
    g = torch.Generator().manual_seed(0)
    verts = (ico.verts[None] * 0.6 + 0.05 * torch.randn(2, ico.num_verts, 3, generator=g)).to(device)
    verts[..., 2] += 5.0
    verts.requires_grad_(True)
    faces = ico.faces.to(device)
    kw = dict(height=24, width=20, sigma=1e-3, eps=1e-3, near=1.0, far=100.0)

    def loss(log_t, pix, face, prob, bary, depth):  # independent of the pairs' order
        key = (pix * 7919 + face).to(log_t.dtype)
        return (log_t.sin().sum() + (prob * key.mul(0.37).sin()).sum() + (bary * key.mul(0.11).cos()).sum()
                + (depth * key.mul(0.05).sin()).sum())  # fmt: skip

    ref = soft_pairs(*face_tensors(verts, faces), faces_per_image=faces.shape[0], **kw)  # the pure-PyTorch path
    (gref,) = torch.autograd.grad(loss(*ref), verts, retain_graph=True)
    (gsil_ref,) = torch.autograd.grad(ref[0].sin().sum(), verts)
    fxy, fz, area2 = face_tensors(verts, faces)
    sil = fused_soft_silhouette(fxy, fz.detach(), area2.detach(), n_images=2, **kw)
    (gsil,) = torch.autograd.grad(sil.sin().sum(), verts)
    fxy, fz, area2 = face_tensors(verts, faces)
    got = fused_soft_pairs(fxy, fz, area2, n_images=2, **kw)
    (ggot,) = torch.autograd.grad(loss(*got), verts)
    i, j = (ref[1] * (1 << 32) + ref[2]).argsort(), (got[1] * (1 << 32) + got[2]).argsort()
    same_pairs = torch.equal(ref[1][i], got[1][j]) and torch.equal(ref[2][i], got[2][j])
    close = [torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(
        (sil, got[0], got[3][j], got[4][:, j], got[5][j]), (ref[0], ref[0], ref[3][i], ref[4][:, i], ref[5][i]))]
    grads = [torch.allclose(a, b, atol=1e-3, rtol=1e-3) for a, b in ((gsil, gsil_ref), (ggot, gref))]
    return bool(same_pairs and all(close) and all(grads))


def fused_available(device: torch.device, mode: str) -> bool:
    """Whether ``soft_rasterize`` takes the fused path on ``device`` under ``mode`` (:data:`FUSED_MODES`).

    Raises:
        ValueError: ``mode="always"`` where the fused path cannot run (no Triton, or neither CUDA nor the interpreter).
    """
    check_fused_mode(mode)
    if mode == "never":
        return False
    runnable = triton_available() and (device.type == "cuda" or (interpreting() and device.type == "cpu"))
    if mode == "always":
        if not runnable:
            raise ValueError("RenderSettings.fused='always' needs Triton and a CUDA device (or TRITON_INTERPRET=1 on "
                             "the CPU); use 'auto' or 'never'")  # fmt: skip
        return True
    return device.type == "cuda" and runnable and _checked(device.type, device.index)


@functools.cache
def _checked(device_type: str, index: int | None) -> bool:
    """:func:`_self_check`, once per device; a kernel that fails to compile or to run counts as failing it."""
    try:
        ok = _self_check(device_type, index)
    except Exception as e:  # noqa: BLE001 -- any failure means: use the pure-PyTorch path
        warnings.warn(f"the fused Triton renderer failed to run on {device_type} ({first_line(e)}); "
                      "using the pure-PyTorch path", RuntimeWarning, stacklevel=3)  # fmt: skip
        return False
    if not ok:
        warnings.warn(f"the fused Triton renderer disagrees with the pure-PyTorch path on {device_type}; using the "
                      "pure-PyTorch path", RuntimeWarning, stacklevel=3)  # fmt: skip
    return ok

