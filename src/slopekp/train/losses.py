"""Training losses as pure tensor functions (METHOD §7).

* :func:`mask_loss` — §7.1, ``L_mask = mean_px[ D·S + (S − M)² ]`` per rendered silhouette, where ``S`` is the
  rendered soft silhouette, ``M`` the (soft, bilinearly resized) ground-truth mask and ``D`` the mask's distance
  transform ``EDT(1 − (M > 0.5)) / max(H, W)`` (0 inside the mask). The ``D·S`` term pulls silhouette pixels that
  lie outside the mask back towards it from any distance; the squared term matches the mask where they overlap.
* :func:`texture_loss` — §7.2 with the issue's choice of distance: ``L1 + (1 − SSIM)`` between the rendered and
  the input image, **both** masked by the ground-truth mask. SSIM is ``pytorch_msssim.ssim`` (a small, focused,
  maintained implementation of Wang et al. 2004 with the standard 11-px Gaussian window; kornia would also do,
  but it is a large dependency for one function). The perceptual (AlexNet) distance of the original needs
  ImageNet weights and is not part of this package.
* :func:`texture_flow_loss` — CMR's ``tex_dt_loss`` for the texture-flow head: the mask's distance transform ``D``
  at the positions the flow samples, averaged over texels, so the texture is read from the bird, not the background.
* :func:`flow_projection_loss` — slopekp's addition for the texture-flow head: the L1 pull of each texel's flow to
  where the image's best camera sees it on the predicted mesh (:func:`slopekp.render.uv_atlas.project_texels`), over
  the visible texels. CMR trains its flow through the rendered texture alone, which moves a texel only where the
  image has a colour gradient; the cameras and the mesh say where to look directly.
* :func:`camera_loss` — §7.8, ``(1 − |⟨q̂, q*⟩|) + mean((s, tx, ty) − (s*, tx*, ty*))²`` per image.
* :func:`heatmap_loss` — §7.7, ``10 · mean_{b,k,i,j} (w_bk (Ĥ_bk − G_bk))²``.
* :func:`hypothesis_weights` — §5.4, the detached per-hypothesis weights of Stage II's network loss.
* The shape priors (§7.3–7.6) are in :mod:`slopekp.mesh.regularizers`.
"""

from __future__ import annotations

import torch
from pytorch_msssim import ssim
from torch import Tensor

from slopekp.models.texture import sample_image
from slopekp.render.uv_atlas import TexelView
from slopekp.train.scores import hypothesis_scores, minmax_rescale


def mask_loss(silhouette: Tensor, mask: Tensor, mask_dt: Tensor) -> Tensor:
    """Per-silhouette mask loss ``mean_px[D·S + (S − M)²]`` (METHOD §7.1).

    Args:
        silhouette: ``(B, H, W)`` or ``(B, P, H, W)`` rendered soft silhouettes ``S`` in [0, 1] (``P``
            hypotheses of the same image share its mask).
        mask: ``(B, H, W)`` ground-truth masks ``M`` in [0, 1].
        mask_dt: ``(B, H, W)`` distance transform ``D`` of the mask (0 inside, grows outside).

    Returns:
        ``(B,)`` or ``(B, P)``: the loss averaged over pixels (no reduction over images or hypotheses).

    Raises:
        ValueError: if the shapes disagree.
    """
    if mask.dim() != 3 or mask_dt.shape != mask.shape:
        raise ValueError(
            f"mask and mask_dt must both have shape (B, H, W); got {tuple(mask.shape)} and {tuple(mask_dt.shape)}"
        )
    if silhouette.dim() == 4:
        m, d = mask[:, None], mask_dt[:, None]
    elif silhouette.dim() == 3:
        m, d = mask, mask_dt
    else:
        raise ValueError(f"silhouette must have shape (B, H, W) or (B, P, H, W), got {tuple(silhouette.shape)}")
    if silhouette.shape[0] != mask.shape[0] or silhouette.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"silhouette {tuple(silhouette.shape)} does not match mask {tuple(mask.shape)} (batch and H, W must agree)"
        )
    per_px = d * silhouette + (silhouette - m).square()
    return per_px.flatten(-2).mean(-1)


def texture_flow_loss(flow: Tensor, mask_dt: Tensor) -> Tensor:
    """Mean of the mask's distance transform at the texture flow's sampling positions (CMR's ``tex_dt_loss``).

    Args:
        flow: ``(B, 2, Hu, Wu)`` NDC positions in the input (``x right, y down``; pixel centres at ``(2j+1)/W − 1``).
        mask_dt: ``(B, H, W)`` the mask's distance transform (0 inside the mask, :func:`mask_loss`'s ``D``), sampled
            bilinearly with the same convention, so its gradient pulls outside samples towards the mask.

    Returns:
        ``(B,)`` per image.
    """
    if flow.dim() != 4 or flow.shape[1] != 2 or mask_dt.dim() != 3 or mask_dt.shape[0] != flow.shape[0]:
        raise ValueError(f"expected flow (B, 2, Hu, Wu) and mask_dt (B, H, W); got {tuple(flow.shape)} and "
                         f"{tuple(mask_dt.shape)}")  # fmt: skip
    return sample_image(mask_dt[:, None].to(flow.dtype), flow).flatten(1).mean(1)


def flow_projection_loss(flow: Tensor, view: TexelView) -> Tensor:
    """``(B,)``: the mean L1 distance (NDC) between ``flow (B, 2, Hu, Wu)`` and ``view.points2d`` over each image's
    visible texels (0 for an image without one); ``view`` from :func:`slopekp.render.uv_atlas.project_texels`."""
    vis = view.visible.to(flow.dtype)
    per_texel = (flow - view.points2d.to(flow.dtype)).abs().sum(1)  # (B, Hu, Wu)
    return (per_texel * vis).flatten(1).sum(1) / vis.flatten(1).sum(1).clamp_min(1.0)


def _masked(img: Tensor, mask: Tensor) -> Tensor:
    return img * mask.unsqueeze(-3)


def texture_loss(rendered: Tensor, image: Tensor, mask: Tensor, ssim_weight: float = 1.0) -> Tensor:
    """Per-render texture loss ``mean|Î·M − I·M| + ssim_weight·(1 − SSIM(Î·M, I·M))`` (METHOD §7.2).

    Args:
        rendered: ``(B, 3, H, W)`` or ``(B, P, 3, H, W)`` rendered RGB ``Î`` in [0, 1] (``P`` hypotheses of an
            image share its target).
        image: ``(B, 3, H, W)`` the input image ``I`` in [0, 1].
        mask: ``(B, H, W)`` the ground-truth mask ``M``.
        ssim_weight: weight of the structural term (0 = L1 only).

    Returns:
        ``(B,)`` or ``(B, P)``.
    """

    if image.dim() != 4 or image.shape[1] != 3 or mask.shape != (image.shape[0], *image.shape[-2:]):
        raise ValueError(
            f"image must be (B, 3, H, W) and mask (B, H, W), got {tuple(image.shape)}, {tuple(mask.shape)}"
        )
    lead = rendered.shape[:-3]
    if rendered.shape[-3:] != image.shape[-3:] or rendered.dim() not in (4, 5) or lead[0] != image.shape[0]:
        raise ValueError(f"rendered {tuple(rendered.shape)} does not match image {tuple(image.shape)}")
    target = _masked(image, mask)
    if rendered.dim() == 5:
        target = target.unsqueeze(1).expand_as(rendered)
        m = mask.unsqueeze(1).expand(*lead, *mask.shape[-2:])
    else:
        m = mask
    pred = _masked(rendered, m)
    l1 = (pred - target).abs().flatten(-3).mean(-1)
    if ssim_weight == 0:
        return l1
    side = min(image.shape[-2:])
    win = min(11, side - (1 - side % 2))  # odd, no larger than the image
    s = ssim(pred.reshape(-1, *pred.shape[-3:]), target.reshape(-1, *target.shape[-3:]), data_range=1.0,
             size_average=False, win_size=win)  # fmt: skip
    return l1 + ssim_weight * (1 - s.reshape(lead))


def hypothesis_weights(
    mask_losses: Tensor,
    texture_losses: Tensor | None = None,
    peakiness: float = 20.0,
    eps: float = 1e-4,
    texture_share: float = 0.5,
) -> Tensor:
    """Stage II's detached weights of P hypotheses per image (METHOD §5.4).

    ``T = (1 − w)·minmax(L_mask) + w·minmax(L_tex)`` with ``w = texture_share`` (METHOD: 0.5; ``T = L_mask``
    without texture), with
    ``minmax(x) = (x − min)/(max − min + eps)`` over the hypotheses, then ``softmin(peakiness · minmax(T))``.

    Args:
        mask_losses, texture_losses: ``(B, P)``.

    Returns:
        ``(B, P)`` rows summing to 1, detached.
    """

    with torch.no_grad():
        t = minmax_rescale(mask_losses.detach(), eps)
        if texture_losses is not None and texture_share > 0:
            t = (1 - texture_share) * t + texture_share * minmax_rescale(texture_losses.detach(), eps)
        return hypothesis_scores(t, peakiness)
