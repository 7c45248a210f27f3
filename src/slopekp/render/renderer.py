"""``Renderer``: weak-perspective projection + soft silhouette / soft RGB / hard z-buffer, pure PyTorch.

Modes:

* ``"silhouette"``: SoftRas soft alpha only (``rasterize.soft_rasterize``).
* ``"rgb"``: soft alpha plus SoftRas depth-softmax colours (``shade.softmax_rgb_blend``) from a UV image
  sampled through the sphere-UV mapping (``texture``) or from per-vertex colours; optional Lambertian
  ``Lighting``. Pairs, UV sampling and blend have analytic backward passes (component-major ``(3, M)``
  layouts between them); per-vertex colours and lighting use autograd on top. Colours are computed only for
  the *live* pairs, whose depth-softmax weight does not underflow to 0 (``shade.softmax_weights``): with the
  default ``gamma`` a pair about one depth unit behind its pixel's front surface is dead (27% of the pairs on
  ``rgb16_64``, where this saves about a third of the texture work; ~1% on a bird, where nothing is selected).
* ``"hard"``: z-buffer (``rasterize.hard_rasterize``): alpha in {0, 1}, face index, barycentrics, depth, and
  colours when a texture (or lighting) is given.

Batches: ``verts (B, V, 3)`` with ``cameras (B, 7)`` renders mesh ``b`` under camera ``b`` (results ``(B,
...)``); ``cameras (B, P, 7)`` renders mesh ``b`` under each of its ``P`` cameras (results ``(B, P, ...)``,
the camera-multiplex case; textures are indexed, not copied ``P`` times); ``verts (V, 3)`` is one mesh shared
by all cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

from slopekp.config import RenderConfig
from slopekp.geometry.camera import project_points
from slopekp.render.fused import check_fused_mode
from slopekp.render.rasterize import hard_rasterize, soft_cutoff_radius, soft_rasterize
from slopekp.render.shade import Lighting, camera_facing_normals, lambert_factor, softmax_rgb_blend, softmax_weights
from slopekp.render.texture import UV_SHIFT, sample_bilinear, sample_sphere_uv, sphere_to_uv, uv_to_sphere
from slopekp.utils import checks_values, device_constant, tensor_memo

__all__ = ["MODES", "RenderResult", "RenderSettings", "Renderer"]

MODES = ("silhouette", "rgb", "hard")


_DEFAULTS = RenderConfig()


@dataclass(frozen=True)
class RenderSettings:
    """Renderer settings (defaults follow METHOD §6 except ``sigma``, see below).

    ``image_size``: square side in pixels, or ``(H, W)``.
    ``sigma``: SoftRas silhouette sharpness, a squared NDC distance (U-CMR trains with 1e-5 at 256²; 1e-4
    suits 64²).
    ``gamma``: depth-softmax temperature of the RGB aggregation.
    ``eps``: soft cut-off; pairs with ``D < eps`` are ignored (cut-off radius ``sqrt(sigma·ln(1/eps - 1))``).
    ``z_offset``: weak-perspective depth offset (METHOD §2.1). ``near``/``far``: kept depth range.
    ``background``: RGB of empty pixels. ``double_sided``: render both face sides (else cull back faces).
    ``max_pairs``: bound on face-pixel pairs evaluated in one dense block (transient memory of the forward
    pass).
    ``bg_eps``: normalised depth of the background in the RGB softmax (SoftRas ``eps``).
    ``fused``: the soft silhouette and RGB pairs in Triton kernels (:mod:`slopekp.render.fused`): ``never``
    (default until they are timed on a GPU), ``auto`` (on CUDA when Triton is there and a self-check passes) or
    ``always``.
    """

    image_size: int | tuple[int, int] = 64
    sigma: float = _DEFAULTS.sigma
    gamma: float = _DEFAULTS.gamma
    eps: float = 1e-3
    z_offset: float = _DEFAULTS.z_offset
    near: float = _DEFAULTS.near
    far: float = _DEFAULTS.far
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    double_sided: bool = True
    max_pairs: int = 2_000_000
    bg_eps: float = 1e-3
    fused: str = _DEFAULTS.fused

    @classmethod
    def from_config(cls, cfg: RenderConfig, image_size: int | tuple[int, int], **more) -> RenderSettings:
        """Every field of a :class:`slopekp.config.RenderConfig` (``render.*``) at a stage's own ``image_size``;
        ``more`` sets fields that the config does not hold (``background``, ``max_pairs`` ...)."""
        return cls(image_size=image_size, **{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **more)

    def __post_init__(self) -> None:
        h, w = self.hw
        if not (isinstance(h, int) and isinstance(w, int)) or h <= 0 or w <= 0:
            raise ValueError(
                f"RenderSettings.image_size must be a positive int or (H, W), got {self.image_size!r}"
            )
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"RenderSettings.sigma must be > 0, got {self.sigma}")
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"RenderSettings.gamma must be > 0, got {self.gamma}")
        if not 0 < self.eps < 0.5:
            raise ValueError(f"RenderSettings.eps must be in (0, 0.5), got {self.eps}")
        if not (math.isfinite(self.near) and math.isfinite(self.far) and self.near < self.far):
            raise ValueError(f"RenderSettings needs finite near < far, got near={self.near}, far={self.far}")
        if not math.isfinite(self.z_offset):
            raise ValueError(f"RenderSettings.z_offset must be finite, got {self.z_offset}")
        if len(self.background) != 3 or not all(math.isfinite(c) for c in self.background):
            raise ValueError(f"RenderSettings.background must be 3 finite floats, got {self.background!r}")
        if not (isinstance(self.max_pairs, int) and self.max_pairs > 0):
            raise ValueError(f"RenderSettings.max_pairs must be a positive int, got {self.max_pairs!r}")
        if not (math.isfinite(self.bg_eps) and 0 <= self.bg_eps < 1):
            raise ValueError(f"RenderSettings.bg_eps must be in [0, 1), got {self.bg_eps}")
        check_fused_mode(self.fused)

    @property
    def hw(self) -> tuple[int, int]:
        """``(H, W)`` of the rendered image."""
        if isinstance(self.image_size, (tuple, list)):
            if len(self.image_size) != 2:
                raise ValueError(
                    f"RenderSettings.image_size must be an int or (H, W), got {self.image_size!r}"
                )
            return int(self.image_size[0]), int(self.image_size[1])
        return self.image_size, self.image_size

    @property
    def cutoff_radius(self) -> float:
        """Soft cut-off radius in NDC, ``sqrt(sigma·ln(1/eps - 1))``."""
        return soft_cutoff_radius(self.sigma, self.eps)


class RenderResult(NamedTuple):
    """Renderer output; leading dims ``N`` are the cameras' leading dims, ``(B,)`` or ``(B, P)``.

    ``alpha``: ``(*N, H, W)`` soft (or hard 0/1) coverage in [0, 1].
    ``rgb``: ``(*N, 3, H, W)`` or None (silhouette mode; hard mode without texture or lighting).
    ``face_index``: ``(*N, H, W)`` int64, -1 where empty (hard mode only, else None).
    ``bary``: ``(*N, H, W, 3)`` barycentrics of the visible face, 0 where empty (hard mode only).
    ``depth``: ``(*N, H, W)`` depth of the visible surface, ``far`` where empty (hard mode only).
    """

    alpha: Tensor
    rgb: Tensor | None = None
    face_index: Tensor | None = None
    bary: Tensor | None = None
    depth: Tensor | None = None


def _shape_of(x) -> object:
    """Shape of a tensor for error messages, or the type name of anything else."""
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_finite(name: str, t: Tensor) -> None:
    if not checks_values(t):  # on an accelerator: a host synchronisation per render (utils.checks_values)
        return
    if t.dtype.is_floating_point and t.numel() > 0:
        lo, hi = torch.aminmax(t)  # NaN and ±inf reach the extremes; ~10x cheaper than isfinite(t).all()
        if bool(torch.isfinite(lo) & torch.isfinite(hi)):
            return
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def _check_faces(faces: Tensor, num_verts: int) -> Tensor:
    if not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[1] != 3:
        shape = _shape_of(faces)
        raise ValueError(f"faces must be a tensor of shape (F, 3), got {shape}")
    if faces.dtype.is_floating_point or faces.dtype.is_complex or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor, got dtype {faces.dtype}")
    if faces.shape[0] == 0:
        raise ValueError("faces is empty (0 faces)")
    # off the CPU, once per faces tensor (unchanged since): the range check reads values back from the device
    (_check_face_range if checks_values(faces) else _check_face_range_once)(faces, num_verts)
    return faces.long()


def _check_face_range(faces: Tensor, num_verts: int) -> None:
    lo, hi = int(faces.min()), int(faces.max())
    if lo < 0 or hi >= num_verts:
        bad = lo if lo < 0 else hi
        raise ValueError(f"faces index {bad} out of range for {num_verts} vertices")


_check_face_range_once = tensor_memo(_check_face_range)


class _Texture(NamedTuple):
    """Colour source, indexed per render by ``index: (N,)``."""

    uv_image: Tensor | None  # (T, 3, Hu, Wu)
    sphere: Tensor | None  # (V, 3) sphere points of verts_uv
    verts_rgb: Tensor | None  # (T, V, 3)
    index: Tensor  # (N,) int64 -> row of uv_image / verts_rgb


class Renderer(torch.nn.Module):
    """Differentiable mesh renderer (no learnable state; the settings are fixed at construction)."""

    def __init__(self, settings: RenderSettings | None = None) -> None:
        super().__init__()
        self.settings = settings if settings is not None else RenderSettings()
        if not isinstance(self.settings, RenderSettings):
            raise ValueError(f"settings must be a RenderSettings, got {type(self.settings).__name__}")

    def forward(
        self,
        verts: Tensor,
        faces: Tensor,
        cameras: Tensor,
        *,
        mode: str = "silhouette",
        uv_image: Tensor | None = None,
        verts_uv: Tensor | None = None,
        verts_rgb: Tensor | None = None,
        lighting: Lighting | None = None,
    ) -> RenderResult:
        """Project and render.

        Args:
            verts: ``(B, V, 3)`` object-frame vertices, or ``(V, 3)`` for one mesh shared by all cameras.
            faces: ``(F, 3)`` int64 vertex indices, shared by the batch.
            cameras: ``(B, 7)`` or ``(B, P, 7)`` weak-perspective ``[s, tx, ty, qw, qx, qy, qz]`` in NDC.
            mode: ``"silhouette"``, ``"rgb"`` or ``"hard"``.
            uv_image: ``(B, 3, Hu, Wu)`` UV texture (one per mesh), used with ``verts_uv: (V, 2)``.
            verts_rgb: ``(B, V, 3)`` (or ``(V, 3)``) per-vertex colours, instead of a UV image.
            lighting: optional ``Lighting`` (flat Lambertian); without a texture the albedo is white.

        Returns:
            ``RenderResult`` with leading dims ``(B,)`` or ``(B, P)``.
        """
        if not isinstance(verts, Tensor) or verts.dim() not in (2, 3) or verts.shape[-1] != 3:
            shape = _shape_of(verts)
            raise ValueError(f"verts must have shape (B, V, 3) or (V, 3), got {shape}")
        if not isinstance(cameras, Tensor) or cameras.dim() not in (2, 3) or cameras.shape[-1] != 7:
            shape = _shape_of(cameras)
            raise ValueError(f"cameras must have shape (B, 7) or (B, P, 7), got {shape}")
        _check_finite("verts", verts)
        _check_finite("cameras", cameras)
        lead = cameras.shape[:-1]
        n_mesh = lead[0]
        if verts.dim() == 3 and verts.shape[0] != n_mesh:
            raise ValueError(f"verts has batch {verts.shape[0]} but cameras has batch {n_mesh}")
        n_per = lead[1] if len(lead) == 2 else 1
        pts = verts if verts.dim() == 2 else (verts.unsqueeze(1) if len(lead) == 2 else verts)
        screen = project_points(pts, cameras.to(verts.dtype), self.settings.z_offset)  # (*lead, V, 3)
        screen = screen.reshape(-1, verts.shape[-2], 3)
        tex_index = torch.arange(screen.shape[0], device=verts.device) // n_per
        res = self.render_screen(
            screen, faces, mode=mode, uv_image=uv_image, verts_uv=verts_uv, verts_rgb=verts_rgb,
            lighting=lighting, texture_index=tex_index,
        )
        return RenderResult(*(None if t is None else t.reshape(*lead, *t.shape[1:]) for t in res))

    def render_screen(
        self,
        screen_verts: Tensor,
        faces: Tensor,
        *,
        mode: str = "silhouette",
        uv_image: Tensor | None = None,
        verts_uv: Tensor | None = None,
        verts_rgb: Tensor | None = None,
        lighting: Lighting | None = None,
        texture_index: Tensor | None = None,
    ) -> RenderResult:
        """Render already projected vertices.

        Args:
            screen_verts: ``(N, V, 3)`` ``[x_ndc, y_ndc, depth]`` (x right, y down, smaller depth closer).
            faces: ``(F, 3)`` int64.
            mode, uv_image, verts_uv, verts_rgb, lighting: as in ``forward``; ``uv_image: (T, 3, Hu, Wu)``,
                ``verts_rgb: (T, V, 3)`` or ``(V, 3)``.
            texture_index: ``(N,)`` int64 row of ``uv_image`` / ``verts_rgb`` used by each render; default
                ``arange(N)`` (or all 0 when ``T == 1``).

        Returns:
            ``RenderResult`` with leading dim ``N``.
        """
        st = self.settings
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(screen_verts, Tensor) or screen_verts.dim() != 3 or screen_verts.shape[-1] != 3:
            shape = _shape_of(screen_verts)
            raise ValueError(f"screen_verts must have shape (N, V, 3), got {shape}")
        if not screen_verts.dtype.is_floating_point:
            raise ValueError(f"screen_verts must be floating point, got {screen_verts.dtype}")
        _check_finite("screen_verts", screen_verts)
        n_img, n_verts = screen_verts.shape[:2]
        faces = _check_faces(faces, n_verts).to(screen_verts.device)
        tex = self._texture(screen_verts, mode, uv_image, verts_uv, verts_rgb, lighting, texture_index)
        h, w = st.hw
        if mode == "hard":
            frag = hard_rasterize(
                screen_verts, faces, height=h, width=w, near=st.near, far=st.far,
                double_sided=st.double_sided, max_pairs=st.max_pairs,
            )
            rgb = None
            if tex is not None:
                flat_face = frag.face_index.reshape(-1)
                covered = flat_face >= 0
                pix = torch.nonzero(covered).squeeze(1)
                n_of = pix // (h * w)
                g = n_of * faces.shape[0] + flat_face[pix]
                col = self._colours(screen_verts, faces, tex, lighting, g, frag.bary.reshape(-1, 3)[pix])
                bg = device_constant(st.background, screen_verts.dtype, screen_verts.device)
                img = bg.expand(n_img * h * w, 3).index_put((pix,), col)
                rgb = img.view(n_img, h, w, 3).permute(0, 3, 1, 2)
            return RenderResult(frag.alpha, rgb, frag.face_index, frag.bary, frag.depth)
        log_t, pairs = soft_rasterize(
            screen_verts, faces, height=h, width=w, sigma=st.sigma, eps=st.eps, near=st.near, far=st.far,
            double_sided=st.double_sided, max_pairs=st.max_pairs, return_pairs=mode == "rgb", fused=st.fused,
        )
        alpha = 1 - torch.exp(log_t)
        if mode == "silhouette":
            return RenderResult(alpha)
        # colours only for the live pairs: the others' softmax weights are exactly 0 (with the default gamma, most
        # pairs behind a pixel's front surface)
        kw = {"num_pixels": n_img * h * w, "gamma": st.gamma, "near": st.near, "far": st.far, "bg_eps": st.bg_eps}
        weights = softmax_weights(pairs.pix, pairs.depth, **kw)
        live = None if weights.index.shape[0] == weights.num_pairs else weights.index
        col = self._colours(screen_verts, faces, tex, lighting, pairs.face, pairs.bary, live)
        bg = device_constant(st.background, screen_verts.dtype, screen_verts.device)
        rgb = softmax_rgb_blend(pairs.pix, pairs.prob, pairs.depth, col, background=bg, weights=weights, **kw)
        return RenderResult(alpha, rgb.view(n_img, h, w, 3).permute(0, 3, 1, 2))

    def _texture(self, screen_verts, mode, uv_image, verts_uv, verts_rgb, lighting, texture_index):
        n_img, n_verts = screen_verts.shape[:2]
        if uv_image is not None and verts_rgb is not None:
            raise ValueError("give either uv_image (with verts_uv) or verts_rgb, not both")
        if mode == "silhouette":
            if uv_image is not None or verts_rgb is not None or lighting is not None:
                raise ValueError("mode='silhouette' takes no uv_image, verts_rgb or lighting; use mode='rgb'")
            return None
        if lighting is not None and not isinstance(lighting, Lighting):
            raise ValueError(f"lighting must be a Lighting, got {type(lighting).__name__}")
        if uv_image is None and verts_rgb is None and lighting is None:
            if mode == "rgb":
                raise ValueError(
                    "mode='rgb' needs uv_image + verts_uv, verts_rgb, or lighting (white albedo)"
                )
            return None
        device = screen_verts.device
        sphere = None
        if uv_image is not None:
            if not isinstance(uv_image, Tensor) or uv_image.dim() != 4 or uv_image.shape[1] != 3:
                shape = _shape_of(uv_image)
                raise ValueError(f"uv_image must have shape (B, 3, Hu, Wu), got {shape}")
            if uv_image.shape[2] < 1 or uv_image.shape[3] < 1:
                raise ValueError(f"uv_image is empty: {tuple(uv_image.shape)}")
            if verts_uv is None:
                raise ValueError("uv_image needs verts_uv (V, 2)")
            if not isinstance(verts_uv, Tensor) or tuple(verts_uv.shape) != (n_verts, 2):
                shape = _shape_of(verts_uv)
                raise ValueError(f"verts_uv must have shape ({n_verts}, 2), got {shape}")
            _check_finite("uv_image", uv_image)
            _check_finite("verts_uv", verts_uv)
            sphere = uv_to_sphere(verts_uv.to(screen_verts.dtype))
            rows = uv_image.shape[0]
        elif verts_rgb is not None:
            if not isinstance(verts_rgb, Tensor) or verts_rgb.dim() not in (2, 3) or verts_rgb.shape[-2:] != (
                n_verts, 3,
            ):
                shape = _shape_of(verts_rgb)
                raise ValueError(
                    f"verts_rgb must have shape (B, {n_verts}, 3) or ({n_verts}, 3), got {shape}"
                )
            _check_finite("verts_rgb", verts_rgb)
            if verts_rgb.dim() == 2:
                verts_rgb = verts_rgb.unsqueeze(0)
            rows = verts_rgb.shape[0]
        else:
            rows = 1
        if texture_index is None:
            texture_index = torch.arange(n_img, device=device) if rows != 1 else torch.zeros(
                n_img, dtype=torch.long, device=device
            )
        elif rows == 1:
            texture_index = torch.zeros_like(texture_index)
        bad_index = texture_index.shape != (n_img,) or (
            checks_values(texture_index) and (int(texture_index.max()) >= rows or int(texture_index.min()) < 0)
        )
        if bad_index:
            raise ValueError(
                f"texture batch {rows} does not match the {n_img} renders "
                f"(texture_index must index rows 0..{rows - 1})"
            )
        return _Texture(uv_image, sphere, verts_rgb, texture_index.to(device))

    @staticmethod
    def _colours(
        screen_verts, faces, tex: _Texture, lighting, g: Tensor, bary: Tensor, index: Tensor | None = None
    ) -> Tensor:
        """Colours ``(M, 3)`` at flat faces ``g = n·F + f`` (``(M,)``) and barycentrics ``(M, 3)``; with
        ``index`` (``(L,)``), colours ``(L, 3)`` of those samples only."""
        n_faces = faces.shape[0]
        fused = tex.uv_image is not None and not tex.sphere.requires_grad
        if index is not None:
            g = g.index_select(0, index)
            if not fused:
                bary = bary.index_select(0, index)
        if fused:
            # analytic backward (w.r.t. bary and the UV image) in component-major layouts; face and texture row
            # through per flat face tables (a gather each, cheaper than an integer division per sample)
            n_img = screen_verts.shape[0]
            corners = tex.sphere.index_select(0, faces.reshape(-1)).view(n_faces, 9).T.contiguous()  # (9, F)
            f = torch.arange(n_faces, device=g.device).repeat(n_img).index_select(0, g)
            row = tex.index.repeat_interleave(n_faces).index_select(0, g)
            col = sample_sphere_uv(
                tex.uv_image.to(screen_verts.dtype), row, corners, f, bary.T, UV_SHIFT, bary_index=index
            ).T
            return col if lighting is None else col * Renderer._shade(screen_verts, faces, lighting, g)
        n = torch.div(g, n_faces, rounding_mode="floor")
        f = g - n * n_faces
        row = tex.index.index_select(0, n)
        if tex.uv_image is not None:
            pts = (tex.sphere[faces[f]] * bary.unsqueeze(-1)).sum(1)
            col = sample_bilinear(tex.uv_image.to(screen_verts.dtype), row, sphere_to_uv(pts, UV_SHIFT))
        elif tex.verts_rgb is not None:
            vr = tex.verts_rgb.to(screen_verts.dtype)
            col = (vr[row.unsqueeze(1), faces[f]] * bary.unsqueeze(-1)).sum(1)
        else:
            col = screen_verts.new_ones(g.shape[0], 3)
        return col if lighting is None else col * Renderer._shade(screen_verts, faces, lighting, g)

    @staticmethod
    def _shade(screen_verts, faces, lighting, g: Tensor) -> Tensor:
        """Lambertian factors ``(M, 1)`` of flat faces ``g``."""
        return lambert_factor(camera_facing_normals(screen_verts, faces), lighting).reshape(-1)[g].unsqueeze(1)
