"""``slopekp.devtools.host_syncs``: the operations that would make the host wait for a CUDA device, found on the
CPU; and the Stage I step, which must have none on the fused path (issue 13)."""

from __future__ import annotations

import pytest
import torch

from slopekp.devtools import host_syncs
from slopekp.mesh import icosphere
from slopekp.render import Renderer, RenderSettings
from slopekp.render.fused import triton_available
from slopekp.train.hypotheses import OffsetSettings, hypothesis_cameras
from slopekp.train.stage1 import fit_hypotheses


def test_each_kind_of_synchronisation_is_found_and_plain_arithmetic_is_not():
    x = torch.arange(6.0)
    cases = {
        "__bool__": lambda: bool(x[0] > 1),
        "__int__": lambda: int(x[1]),
        "__float__": lambda: float(x[2]),
        "item": lambda: x[3].item(),
        "tolist": lambda: x.tolist(),
        "nonzero": lambda: x.nonzero(),
        "__getitem__": lambda: x[x > 2],  # a boolean mask
        "__setitem__": lambda: x.clone().__setitem__(x > 2, 0.0),
        "repeat_interleave": lambda: torch.repeat_interleave(x.long()),
        "tensor": lambda: torch.tensor([1.0, 2.0], device=x.device),  # Python data copied to the device
        "unique": lambda: torch.unique(x),
        "where": lambda: torch.where(x > 1),
    }
    for op, fn in cases.items():
        with host_syncs() as syncs:
            fn()
        assert [s.op for s in syncs] == [op], (op, syncs)
    with host_syncs() as syncs:
        y = (x * 2).sin().cumsum(0)
        y = torch.where(y > 0, y, 0.0)[torch.arange(3)]
        torch.repeat_interleave(x, 2)
        x.to(torch.float64)
    assert syncs == []
    with host_syncs() as syncs:
        int(x[0])
    assert syncs[0].where.startswith("test_devtools.py:")  # the line that asked, for want of a slopekp one


def _stage1_syncs(steps: int, fused: str, device: torch.device) -> list:
    mesh = icosphere(1)  # few faces: Triton's interpreter is slow
    verts, faces = mesh.verts.to(device), mesh.faces.to(device)
    renderer = Renderer(RenderSettings(image_size=16, fused=fused))
    cams = hypothesis_cameras(2, 1, 1, scale=0.7, device=device)
    mask = torch.zeros(1, 16, 16, device=device)
    mask[:, 4:12, 3:13] = 1
    kw = dict(settings=OffsetSettings(gain=0.1), steps=steps)
    fit_hypotheses(verts, faces, renderer, mask, mask.clone(), cams, **kw)  # checks the faces once
    with host_syncs() as syncs:
        fit_hypotheses(verts, faces, renderer, mask, mask.clone(), cams, **kw)
    return syncs


@pytest.mark.triton
@pytest.mark.skipif(not triton_available(), reason="needs triton (pip install -e '.[triton]')")
def test_the_stage1_step_waits_for_nothing_on_the_fused_path(triton_device, monkeypatch):
    """Per step: no synchronisation at all, with the value checks as on an accelerator. The fit as a whole has a
    few (its mask check and its scores), the same for 1 and 3 steps. The pure-PyTorch path's planner needs the
    faces' windows on the host: it must show up here, or the audit is blind."""
    monkeypatch.setenv("SLOPEKP_CHECK_VALUES", "0")
    one, three = _stage1_syncs(1, "always", triton_device), _stage1_syncs(3, "always", triton_device)
    assert len(one) == len(three) and len(one) <= 2, three  # check_masks and hypothesis_scores' finite check
    plain_one, plain_three = _stage1_syncs(1, "never", triton_device), _stage1_syncs(3, "never", triton_device)
    assert len(plain_three) > len(plain_one)
    assert any(s.where.startswith("plan.py") for s in plain_three)
