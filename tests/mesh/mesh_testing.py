"""Small hand-built meshes for the mesh tests (independent of the code under test)."""

from __future__ import annotations

import torch


def tetrahedron() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit right-corner tetrahedron, volume 1/6, faces wound outward (checked by hand)."""
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # bottom z=0 seen from below: 0,2,1; side y=0 seen from -y: 0,1,3; side x=0 seen from -x: 0,3,2;
    # slanted face: 1,2,3
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return verts, faces


def cube() -> tuple[torch.Tensor, torch.Tensor]:
    """Unit cube [0,1]^3, 12 triangles, counter-clockwise seen from outside, volume 1."""
    verts = torch.tensor(
        [[x, y, z] for x in (0.0, 1.0) for y in (0.0, 1.0) for z in (0.0, 1.0)]
    )  # index = 4x + 2y + z
    quads = [
        (0, 1, 3, 2),  # x = 0, seen from -x: (0,0,0)->(0,0,1)->(0,1,1)->(0,1,0)
        (4, 6, 7, 5),  # x = 1
        (0, 4, 5, 1),  # y = 0
        (2, 3, 7, 6),  # y = 1
        (0, 2, 6, 4),  # z = 0
        (1, 5, 7, 3),  # z = 1
    ]
    faces = []
    for a, b, c, d in quads:
        faces += [(a, b, c), (a, c, d)]
    return verts, torch.tensor(faces)


def flat_grid(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n vertex grid in the z = 0 plane with random-ish non-uniform spacing; faces CCW seen from +z."""
    xs = torch.cumsum(torch.tensor([0.0, 1.0, 0.7, 1.3, 0.9, 1.1, 0.8, 1.2][:n]), 0)
    ys = torch.cumsum(torch.tensor([0.0, 0.8, 1.2, 1.0, 0.6, 1.4, 0.9, 1.1][:n]), 0)
    verts = torch.tensor([[float(x), float(y), 0.0] for y in ys for x in xs])
    faces = []
    for j in range(n - 1):
        for i in range(n - 1):
            a, b, c, d = j * n + i, j * n + i + 1, (j + 1) * n + i + 1, (j + 1) * n + i
            faces += [(a, b, c), (a, c, d)]
    return verts, torch.tensor(faces)
