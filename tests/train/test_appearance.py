"""The depth-mirror choice by a shared appearance (slopekp.train.appearance): on images rendered with a known
colouring, it must recover which of each image's pose targets were planted on the wrong side of the mirror."""

from __future__ import annotations

import math

import pytest
import torch

from slopekp.eval.metrics import rotation_error
from slopekp.geometry.camera import depth_mirror_cameras, reflect_camera
from slopekp.geometry.rotations import quat_normalize, quat_to_rotmat
from slopekp.mesh import load_template
from slopekp.render import Renderer, RenderSettings
from slopekp.train.appearance import fit_mirror_choice, pair_statistics, surface_basis

SIZE = 32


def _views(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` cameras whose depth mirror is at least 60° away (the pairs worth deciding) and that look along the
    colouring's axis (object z) by at least 0.35 of their viewing direction: a colouring that varies only across
    the line of sight looks the same from either side of the mirror once the lighting's image-plane trend is
    removed, and is left undecided by design."""
    out = []
    while len(out) < n:
        q = quat_normalize(torch.randn(4, generator=gen))
        cam = torch.cat([torch.tensor([0.7, 0.0, 0.0]), q])
        along = quat_to_rotmat(q)[2, 2].abs()
        if along > 0.35 and rotation_error(cam[None], depth_mirror_cameras(cam[None]))[0] > math.radians(60):
            out.append(cam)
    return torch.stack(out)


def _scene(n: int, mirrored_share: float, seed: int = 0):
    """Images of the template coloured by a field that darkens along one object axis, each lit by its own
    brightness gradient over the image plane; the "best" cameras are the true ones with a planted share replaced
    by their depth mirror."""
    gen = torch.Generator().manual_seed(seed)
    t = load_template("procedural")
    renderer = Renderer(RenderSettings(image_size=SIZE))
    true = _views(n, gen)
    b = surface_basis(t.verts)
    lum = (0.55 - 0.3 * b[:, 3]).clamp(0, 1)  # darker above: a countershaded bird
    colours = lum[None, :, None].expand(n, -1, 3) * torch.tensor([1.0, 0.9, 0.7])  # one hue
    out = renderer(t.verts, t.faces, true, mode="hard", verts_rgb=colours)
    u = torch.linspace(-1, 1, SIZE)
    slope = 0.2 * torch.randn(n, 2, generator=gen)
    light = 1 + slope[:, 0, None, None] * u[:, None] + slope[:, 1, None, None] * u[None, :]
    img = (out.rgb * light[:, None]).clamp(0, 1)
    planted = torch.rand(n, generator=gen) < mirrored_share
    best = torch.where(planted[:, None], depth_mirror_cameras(true), true)
    return t, renderer, img, out.alpha, best, planted


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_the_planted_mirrors_are_found(share):
    """Recovered from a minority and from a majority of wrong sides (the second start decides the latter); a
    mask-only choice would keep every planted error."""
    t, renderer, img, mask, best, planted = _scene(48, share)
    pair = torch.stack([best, depth_mirror_cameras(best)], 1)
    stats = pair_statistics(img, mask, pair, t.verts, t.faces, renderer)
    choice = fit_mirror_choice(*stats)
    assert planted.any() and (~planted).any()
    assert (choice.mirrored == planted).float().mean() >= 0.95, (choice.mirrored, planted)
    assert choice.residual.shape == (48, 2) and choice.rounds >= 1
    summary = choice.summary()
    assert summary["num_images"] == 48 and abs(summary["mirrored_share"] - planted.float().mean()) < 0.05


def test_a_pair_shares_its_silhouette_and_only_the_appearance_tells_them_apart():
    """The premise: under the depth mirror the template covers the same pixels, so the statistics' pixel counts
    agree; without any brightness variation (a flat colour) the residuals tie and the best camera is kept."""
    t, renderer, img, mask, best, _ = _scene(8, 0.5, seed=1)
    pair = torch.stack([best, depth_mirror_cameras(best)], 1)
    a = renderer(t.verts, t.faces, pair, mode="hard").alpha
    assert (a[:, 0] != a[:, 1]).float().mean() < 0.01
    flat = torch.full_like(img, 0.5) * mask[:, None]
    choice = fit_mirror_choice(*pair_statistics(flat, mask, pair, t.verts, t.faces, renderer))
    assert not choice.mirrored.any()


def test_the_mirror_commutes_with_the_horizontal_flip():
    """Stage III flips the choice's camera with a flipped sample: reflect(mirror(c)) must be mirror(reflect(c))."""
    gen = torch.Generator().manual_seed(2)
    cams = torch.cat([torch.rand(16, 3, generator=gen), quat_normalize(torch.randn(16, 4, generator=gen))], 1)
    a = reflect_camera(depth_mirror_cameras(cams))
    b = depth_mirror_cameras(reflect_camera(cams))
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert rotation_error(a, b).max() < 1e-3


def test_bad_statistics_are_refused():
    with pytest.raises(ValueError, match=r"\(best, mirror\) pairs"):
        fit_mirror_choice(torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 4), torch.zeros(3, 3), torch.ones(3, 3))
