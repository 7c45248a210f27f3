"""The shape head (METHOD §4.2–4.3): a learned symmetric mean shape plus a symmetric per-image deformation.

``verts = sym(mean_rows) + sym(Δrows(image))`` where both terms live in the ``[indep, left]`` row layout of
:class:`~slopekp.mesh.symmetry.Symmetry` (``N_learn = I + L`` rows) and ``sym`` mirrors the left rows onto their
right partners (``x → −x``). Predicted shapes are therefore mirror-symmetric **exactly**, by construction:
``verts[:, right] == verts[:, left] ⊙ (−1, 1, 1)`` bit for bit.

Plane vertices (independent vertices whose template ``|x| <= plane_tol``, e.g. the 51 on-plane vertices of
U-CMR's template) are pinned to their template x: their ``Δv_x`` is 0 and the mean shape's x is not learned, so
they stay on the symmetry plane. Independent vertices *off* the plane (U-CMR's 30 vertices whose partner is
beyond the matching tolerance) move freely in x, y and z, as in U-CMR.

:func:`fc_stack` is the shared building block of the shape and regression pose heads.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from slopekp.config import CHOICES
from slopekp.mesh.symmetry import Symmetry
from slopekp.mesh.template import Template

__all__ = ["ShapeHead", "ShapeOutput", "fc_stack"]


def fc_stack(in_dim: int, out_dim: int = 200, num_layers: int = 2) -> nn.Sequential:
    """``[Linear + BatchNorm1d + LeakyReLU(0.2)] × num_layers`` (METHOD §4.2), weights ``N(0, 0.02)``, bias 0.

    The first Linear maps ``in_dim → out_dim``, the others ``out_dim → out_dim``. Modules are numbered
    ``0, 1, 2`` per layer (``0.weight`` is the first Linear), so each head owns its own stack.

    Shapes: ``(B, in_dim) → (B, out_dim)``. In training mode BatchNorm1d needs ``B >= 2``.

    Args:
        in_dim: input features (the encoder's ``flat_dim``, 4096 for a 256² input).
        out_dim: ``nz_feat`` (200 in U-CMR).
        num_layers: number of ``Linear + BN + LeakyReLU`` groups (2 in U-CMR).
    """
    for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("num_layers", num_layers)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"fc_stack {name} must be a positive int, got {value!r}")
    layers: list[nn.Module] = []
    for i in range(num_layers):
        linear = nn.Linear(in_dim if i == 0 else out_dim, out_dim)
        nn.init.normal_(linear.weight, 0.0, 0.02)
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.BatchNorm1d(out_dim), nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class ShapeOutput(NamedTuple):
    """What :class:`ShapeHead` returns; every tensor is exactly mirror-symmetric."""

    verts: Tensor
    """``(B, V, 3)`` the predicted shape in the object frame, ``mean_shape + delta_v``."""
    delta_v: Tensor
    """``(B, V, 3)`` the per-image deformation."""
    mean_shape: Tensor
    """``(V, 3)`` the learned mean shape (shared by the batch)."""


SHAPE_BIAS_INITS = CHOICES["model.shape_bias_init"]
"""The shape head's deformation-bias initialisations (``model.shape_bias_init``): ``zero`` and ``uniform``."""


class ShapeHead(nn.Module):
    """Flat image feature → symmetric shape (METHOD §4.3).

    ``fc_stack(in_dim → nz_feat)`` then ``pred`` = ``Linear(nz_feat → 3·N_learn)`` with weights ``N(0, 1e-4)``
    and PyTorch's default bias (``bias_init="uniform"``, ``±1/√nz_feat``, as U-CMR and METHOD §4.3: ``Δv`` starts
    at up to ±0.07 per coordinate, the same for every image, a crumpled mesh: the procedural template's normal
    consistency drops from 0.94 to 0.27) or a bias of 0 (``"zero"``: the head starts at the mean shape), reshaped
    to ``(N_learn, 3)`` rows and symmetrised to ``(V, 3)``.

    The mean shape is the parameter :attr:`mean_rows` ``(N_learn, 3)``, initialised from the template's
    ``[indep, left]`` rows. Symmetrising it drops the template's right vertices in favour of their mirrored left
    partners, so for a template that is only symmetric up to the matching tolerance the initial mean shape is
    its symmetric version (each right vertex moves by less than the tolerance), not the template itself;
    independent vertices keep their own coordinates.

    Attributes:
        symmetry: the vertex pairing (its index tensors follow the module's device).
        in_dim, nz_feat: feature sizes.
        mean_rows: ``(N_learn, 3)`` learnable mean shape in the row layout (x of plane rows unused).
        template_rows: ``(N_learn, 3)`` buffer, the template's rows (not saved in the state dict).
        free: ``(N_learn, 3)`` bool buffer, False for the x of plane rows (not saved in the state dict).
    """

    def __init__(
        self,
        in_dim: int,
        template_verts: Tensor,
        symmetry: Symmetry,
        nz_feat: int = 200,
        num_layers: int = 2,
        plane_tol: float = 1e-6,
        bias_init: str = "uniform",
    ) -> None:
        """
        Args:
            in_dim: ``D`` of the flat feature (the encoder's ``flat_dim``).
            template_verts: ``(V, 3)`` template vertices in the object frame.
            symmetry: the pairing of ``template_verts`` (``Template.symmetry()`` or ``find_symmetry``).
            nz_feat: width of the fc_stack (200 in U-CMR).
            num_layers: fc_stack layers (2 in U-CMR).
            plane_tol: independent vertices with template ``|x| <= plane_tol`` are pinned to the plane (module
                docstring); a negative value pins none.
            bias_init: ``"uniform"`` (PyTorch's default, U-CMR's) or ``"zero"``, the deformation layer's bias.
        """
        super().__init__()
        if not isinstance(symmetry, Symmetry):
            raise ValueError(f"symmetry must be a Symmetry, got {type(symmetry).__name__}")
        if not isinstance(template_verts, Tensor) or template_verts.dim() != 2 or template_verts.shape[1] != 3:
            shape = tuple(template_verts.shape) if isinstance(template_verts, Tensor) else type(template_verts)
            raise ValueError(f"template_verts must have shape (V, 3), got {shape}")
        if template_verts.shape[0] != symmetry.num_verts:
            raise ValueError(
                f"symmetry is for {symmetry.num_verts} vertices but template_verts has {template_verts.shape[0]}"
            )
        if not template_verts.dtype.is_floating_point or not bool(torch.isfinite(template_verts).all()):
            raise ValueError("template_verts must be finite floats")
        self.in_dim = in_dim
        self.nz_feat = nz_feat
        self.symmetry = symmetry.to(template_verts.device)
        n_rows = self.symmetry.num_rows
        self.fc = fc_stack(in_dim, nz_feat, num_layers)
        self.pred = nn.Linear(nz_feat, 3 * n_rows)
        nn.init.normal_(self.pred.weight, 0.0, 1e-4)
        if bias_init not in SHAPE_BIAS_INITS:
            raise ValueError(f"bias_init must be one of {SHAPE_BIAS_INITS}, got {bias_init!r}")
        if bias_init == "zero":  # "uniform": PyTorch's default, kept (U-CMR, METHOD §4.3)
            nn.init.zeros_(self.pred.bias)

        rows = self.symmetry.to_rows(template_verts.detach().float())
        n_indep = self.symmetry.indep.numel()
        free = torch.ones(n_rows, 3, dtype=torch.bool, device=rows.device)
        free[:n_indep, 0] = rows[:n_indep, 0].abs() > plane_tol
        self.register_buffer("template_rows", rows.clone(), persistent=False)
        self.register_buffer("free", free, persistent=False)
        self.mean_rows = nn.Parameter(rows.clone())

    @classmethod
    def from_template(cls, in_dim: int, template: Template, symmetry_tol: float = 1e-6, **kwargs) -> ShapeHead:
        """A head for ``template`` with its :meth:`~slopekp.mesh.template.Template.symmetry` at ``symmetry_tol``;
        ``kwargs`` go to the constructor (``nz_feat``, ``num_layers``, ``plane_tol``)."""
        return cls(in_dim, template.verts, template.symmetry(symmetry_tol), **kwargs)

    @property
    def num_rows(self) -> int:
        """``N_learn = I + L``."""
        return self.symmetry.num_rows

    @property
    def num_verts(self) -> int:
        """``V``."""
        return self.symmetry.num_verts

    def _apply(self, fn, recurse=True):
        # keep the symmetry's index tensors on the module's device (.to / .cuda), so forward never copies them
        super()._apply(fn, recurse)
        self.symmetry = self.symmetry.to(self.template_rows.device)
        return self

    def mean_shape(self) -> Tensor:
        """``(V, 3)`` the symmetric learned mean shape (plane vertices at their template x)."""
        rows = torch.where(self.free, self.mean_rows, self.template_rows.to(self.mean_rows.dtype))
        return self.symmetry.symmetrize(rows)

    def forward(self, flat: Tensor) -> ShapeOutput:
        """Predict the shape of each image.

        Args:
            flat: ``(B, in_dim)`` the encoder's flat feature (``B >= 2`` in training mode, for BatchNorm1d).

        Returns:
            :class:`ShapeOutput` with ``verts (B, V, 3)``, ``delta_v (B, V, 3)``, ``mean_shape (V, 3)``.
        """
        if not isinstance(flat, Tensor) or flat.dim() != 2 or flat.shape[1] != self.in_dim:
            shape = tuple(flat.shape) if isinstance(flat, Tensor) else type(flat).__name__
            raise ValueError(f"flat must have shape (B, {self.in_dim}), got {shape}")
        delta_rows = self.pred(self.fc(flat)).view(flat.shape[0], self.num_rows, 3)  # (B, N_learn, 3)
        delta_rows = delta_rows * self.free.to(delta_rows.dtype)  # plane vertices: Δx = 0
        delta_v = self.symmetry.symmetrize(delta_rows)  # (B, V, 3)
        mean_shape = self.mean_shape()  # (V, 3)
        return ShapeOutput(verts=mean_shape + delta_v, delta_v=delta_v, mean_shape=mean_shape)
