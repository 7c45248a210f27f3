"""Device-agnostic behaviour (run with ``--device cuda`` on a GPU machine)."""

import torch

from slopekp.mesh import (
    cotangent_laplacian,
    cotangent_laplacian_loss,
    deform_loss,
    edge_length_loss,
    farthest_point_sampling,
    graph_laplacian_loss,
    orient_outward,
    procedural_bird,
    signed_volume,
    vertex_normals,
)


def test_mesh_ops_on_device(device):
    cpu = procedural_bird(2)
    t = cpu.to(device)
    assert t.verts.device.type == device.type and t.faces.device.type == device.type
    s = t.symmetry()
    assert s.left.device.type == device.type
    rows = s.to_rows(t.verts).unsqueeze(0).repeat(2, 1, 1).requires_grad_(True)
    v = s.symmetrize(rows)
    lap = cotangent_laplacian(t.verts, t.faces)
    loss = (
        graph_laplacian_loss(v, t.faces)
        + cotangent_laplacian_loss(v - t.verts, lap)
        + edge_length_loss(v, t.faces, t.verts)
        + deform_loss(v - t.verts)
    )
    loss.backward()
    assert rows.grad.device.type == device.type and torch.isfinite(rows.grad).all()
    assert vertex_normals(v.detach(), t.faces).device.type == device.type
    vol = signed_volume(t.verts, t.faces).cpu()
    assert torch.allclose(vol, signed_volume(cpu.verts, cpu.faces), atol=1e-5)
    assert torch.equal(orient_outward(t.verts, t.faces).cpu(), cpu.faces)
    fps = farthest_point_sampling(t.verts, 10)
    assert fps.device.type == device.type
    assert torch.equal(fps.cpu(), farthest_point_sampling(cpu.verts, 10))
    # the whole loss agrees with the CPU computation
    cpu_rows = rows.detach().cpu()
    sc = cpu.symmetry()
    vc = sc.symmetrize(cpu_rows)
    ref = (
        graph_laplacian_loss(vc, cpu.faces)
        + cotangent_laplacian_loss(vc - cpu.verts, cotangent_laplacian(cpu.verts, cpu.faces))
        + edge_length_loss(vc, cpu.faces, cpu.verts)
        + deform_loss(vc - cpu.verts)
    )
    assert abs(loss.item() - ref.item()) < 1e-4
