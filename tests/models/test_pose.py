"""Tests for ``slopekp.models.pose``: the registry and the regression pose heads (METHOD §4.5 a–c)."""

from __future__ import annotations

import pytest
import torch

from slopekp.geometry.rotations import quat_geodesic_angle, random_quat
from slopekp.mesh import load_template
from slopekp.models.base import EncoderOutput
from slopekp.models.pose import (
    POSE_HEADS,
    GramSchmidtPoseHead,
    KeypointPoseHead,
    PoseHead,
    QuaternionPoseHead,
    SVDPoseHead,
    build_pose_head,
)

REGRESSION = ["quaternion", "gramschmidt", "svd"]
D, HIDDEN = 32, 16  # small dims: the heads' logic does not depend on them


def _enc(bsz: int, dim: int = D, seed: int = 0) -> EncoderOutput:
    """An EncoderOutput whose ``flat`` is random; the regression heads read nothing else."""
    g = torch.Generator().manual_seed(seed)
    return EncoderOutput(features={}, conv=torch.zeros(bsz, 1, 1, 1), flat=torch.randn(bsz, dim, generator=g))


def _camera_loss(cam: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """METHOD §7.8: ``(1 − |<q, q*>|) + mean((s, tx, ty) − (s*, tx*, ty*))²``, batch mean."""
    rot = 1 - (cam[:, 3:] * target[:, 3:]).sum(-1).abs()
    return (rot + ((cam[:, :3] - target[:, :3]) ** 2).mean(-1)).mean()


# ------------------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------------------
def test_registry_lists_the_four_heads():
    assert list(POSE_HEADS) == ["quaternion", "gramschmidt", "svd", "keypoints"]
    assert POSE_HEADS["keypoints"] is KeypointPoseHead
    assert all(issubclass(c, PoseHead) for c in POSE_HEADS.values())


def test_build_pose_head_typo_lists_valid_names():
    valid = r"valid names: 'quaternion', 'gramschmidt', 'svd', 'keypoints'"
    with pytest.raises(ValueError, match=r"unknown pose head 'quaternon'; " + valid):
        build_pose_head("quaternon", in_dim=D)


@pytest.mark.parametrize(
    ("name", "cls"), [("quaternion", QuaternionPoseHead), ("gramschmidt", GramSchmidtPoseHead), ("svd", SVDPoseHead)]
)
def test_build_pose_head_builds_the_named_class(name, cls):
    head = build_pose_head(name, in_dim=D, hidden=HIDDEN)
    assert type(head) is cls
    assert head.rotation.out_features == {"quaternion": 4, "gramschmidt": 6, "svd": 9}[name]


def test_build_pose_head_keypoints():
    head = build_pose_head("keypoints", template_verts=load_template("procedural").verts, base_width=4)
    assert isinstance(head, KeypointPoseHead) and head.keypoint_index.shape == (32,)


# ------------------------------------------------------------------------------------------------------------
# outputs and errors
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REGRESSION)
def test_regression_head_outputs_valid_camera(name):
    torch.manual_seed(0)
    head = build_pose_head(name, in_dim=D, hidden=HIDDEN)
    for mode in (head.train, head.eval):
        mode()
        out = head(_enc(6))
        assert out.camera.shape == (6, 7) and out.extras == {}
        assert torch.allclose(out.camera[:, 3:].norm(dim=-1), torch.ones(6), atol=1e-6)
        assert (out.camera[:, 0] > 0).all()
        assert torch.isfinite(out.camera).all()


def test_regression_head_scale_is_relu_plus_floor():
    """``s = relu(Linear + 0.75) + 1e-12``: exact above zero, the positive floor below."""
    head = build_pose_head("quaternion", in_dim=D, hidden=HIDDEN).eval()
    with torch.no_grad():
        head.scale.weight.zero_()
        head.scale.bias.fill_(0.25)
        assert torch.allclose(head(_enc(3)).camera[:, 0], torch.full((3,), 1.0))
        head.scale.bias.fill_(-5.0)
        assert torch.equal(head(_enc(3)).camera[:, 0], torch.full((3,), 1e-12))


@pytest.mark.parametrize("name", REGRESSION)
def test_regression_head_rejects_wrong_feature_size(name):
    head = build_pose_head(name, in_dim=D, hidden=HIDDEN)
    with pytest.raises(ValueError, match=r"enc.flat must have shape \(B, 32\), got \(2, 31\)"):
        head(_enc(2, dim=31))


def test_regression_head_rejects_bad_dims():
    with pytest.raises(ValueError, match="hidden must be a positive int"):
        QuaternionPoseHead(in_dim=D, hidden=0)


# ------------------------------------------------------------------------------------------------------------
# gradients through the rotation (METHOD §10 item 4: the axis must get gradients)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REGRESSION)
def test_camera_gradient_reaches_every_rotation_logit(name):
    torch.manual_seed(1)
    head = build_pose_head(name, in_dim=D, hidden=HIDDEN)
    logits = {}

    def keep(module, inputs, output):
        output.retain_grad()
        logits["x"] = output

    head.rotation.register_forward_hook(keep)
    cam = head(_enc(4)).camera
    (cam * torch.randn_like(cam)).sum().backward()
    g = logits["x"].grad
    assert g.shape == (4, head.rotation.out_features)
    assert (g.abs() > 1e-9).all(), g
    # and on to the trunk
    assert head.trunk[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [QuaternionPoseHead, GramSchmidtPoseHead, SVDPoseHead])
def test_logits_to_quat_jacobian_has_rank_three(cls):
    """The quaternion moves in all 3 rotational directions (the reference bug gave the angle only: rank 1)."""
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.randn(cls.rotation_dim, dtype=torch.float64, generator=g)
        jac = torch.autograd.functional.jacobian(lambda v: cls.logits_to_quat(v[None])[0], x)  # (4, D)
        assert (jac.abs().sum(0) > 1e-9).all()  # every logit moves the quaternion
        sv = torch.linalg.svdvals(jac)
        assert sv[2] > 1e-3 * sv[0] and sv[3] < 1e-9 * sv[0]  # rank 3: tangent to the unit sphere


@pytest.mark.parametrize("cls", [QuaternionPoseHead, GramSchmidtPoseHead, SVDPoseHead])
def test_logits_to_quat_matches_finite_differences(cls):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, cls.rotation_dim, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(cls.logits_to_quat, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# trainability
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", REGRESSION)
def test_regression_head_fits_a_fixed_camera(name):
    torch.manual_seed(4)
    head = build_pose_head(name, in_dim=D, hidden=HIDDEN)
    enc = _enc(8, seed=5)
    q = random_quat(1, generator=torch.Generator().manual_seed(6))
    target = torch.cat([torch.tensor([[0.6, 0.1, -0.2]]), q], -1).expand(8, 7)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = _camera_loss(head(enc).camera, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses
    head.eval()
    with torch.no_grad():
        cam = head(enc).camera
    assert torch.isfinite(cam).all() and quat_geodesic_angle(cam[:, 3:], target[:, 3:]).mean() < 1.0
