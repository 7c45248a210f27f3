"""Small Stage I fixtures shared by the Stage I tests: masks rendered from known cameras, their distance transforms
(SciPy, independent of the code under test) and perturbed grid views."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from slopekp.geometry.rotations import azelcr_to_quat
from slopekp.render import Renderer, RenderSettings
from slopekp.train.hypotheses import hypothesis_cameras


def mask_dt(mask: torch.Tensor) -> torch.Tensor:
    """Independent EDT (SciPy) of ``1 − (mask > 0.5)`` divided by the side, as the data contract defines."""
    out = [distance_transform_edt(1.0 - (m > 0.5).numpy()) / max(m.shape) for m in mask]
    return torch.from_numpy(np.stack(out)).float()


def render_masks(template, cams: torch.Tensor, size: int) -> torch.Tensor:
    r = Renderer(RenderSettings(image_size=size))
    with torch.no_grad():
        return r(template.verts, template.faces, cams[:, None]).alpha[:, 0]


def perturbed(base: torch.Tensor, ds: float, dt: tuple[float, float], ang_deg: tuple[float, float, float]):
    az, el, cr = (torch.tensor(math.radians(a)) for a in ang_deg)
    q = azelcr_to_quat(az, el, cr, base[3:])
    return torch.cat([base[:1] + ds, base[1:3] + torch.tensor(dt), q])


def pruning_case(bird):
    """Six grid hypotheses fitted to one perturbed grid view: ``(init, renderer, mask, dt)``."""
    init = hypothesis_cameras(3, 2, el_bias_deg=20.0)
    gt = perturbed(init[2], 0.08, (0.04, -0.03), (9.0, -6.0, 5.0))[None]
    mask = render_masks(bird, gt, 24)
    return init, Renderer(RenderSettings(image_size=24)), mask, mask_dt(mask)
