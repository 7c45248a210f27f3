"""The Python API of a trained model: ``Reconstructor.from_checkpoint(path).predict(photo) -> Reconstruction``.

>>> from slopekp import Reconstructor
>>> rec = Reconstructor.from_checkpoint("runs/stage3_keypoints/checkpoints/last.pt")  # doctest: +SKIP
>>> r = rec.predict("bird.jpg", mask="bird_mask.png")  # doctest: +SKIP
>>> r.export("bird.glb"); r.render(azimuth=60)  # doctest: +SKIP

:class:`Reconstructor` wraps the network (:class:`slopekp.models.reconstructor.ReconstructionNet`), its template
and the training run's crop settings; :class:`Reconstruction` is one photo's result: the mesh in the object frame
(``docs/conventions.md``), its UV texture, the camera in the NDC of the crop, and the crop's place in the photo.
(The network's own batch output is :class:`slopekp.models.base.Prediction`; a ``Reconstruction`` is one photo's
share of it, with what a person needs around it.) Everything runs on the device the model was loaded on, CPU or CUDA.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slopekp.data.transforms import PixelAffine, paste_crop
from slopekp.data.viewpoints import rotations_to_azelcr
from slopekp.eval.report import load_trained_model
from slopekp.geometry.camera import affine_camera, ndc_to_px_camera, px_to_ndc_camera, turn_camera
from slopekp.geometry.rotations import quat_to_rotmat
from slopekp.mesh.io import export_mesh, textured_trimesh
from slopekp.models.encoder import normalize_image
from slopekp.predict.inputs import PhotoCrop, crop_photo, object_box, read_mask, read_photo
from slopekp.render import Lighting, Renderer, RenderSettings
from slopekp.utils import resolve_device

__all__ = ["MESH_RGB", "OBJECT_TO_FILE", "CropWarning", "Reconstruction", "Reconstructor"]

#: The colour of untextured renders (light blue, as in the SLOPE-KP and U-CMR figures).
MESH_RGB = (156 / 255, 199 / 255, 234 / 255)


class CropWarning(UserWarning):
    """The crop is probably not what the network expects: the photo was read whole (neither a mask nor a box said
    where the object is), or the object's box is tiny."""


#: Boxes narrower than this (pixels of the photo) get a :class:`CropWarning`.
MIN_BOX_SIDE = 16

#: Side of the crop the photo texture reads (the figures' default size), so that the texture keeps the photo's detail
#: rather than the network input's (64² for SynthBirds models); the UV image is then 256×512.
TEXTURE_SIDE = 256

#: Object frame → the frame of exported files (glTF's convention: +Y up, +Z towards the viewer): X = the bird's
#: left, Y = its back (up), Z = its beak (front). A proper rotation, so OBJ/GLB open upright in Blender and browsers.
OBJECT_TO_FILE = ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, -1.0, 0.0))


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """One photo's reconstruction. Tensors are on the model's device and hold no gradient.

    Attributes:
        verts: ``(V, 3)`` the predicted shape in the object frame.
        faces: ``(F, 3)`` int64, the template's triangles.
        verts_uv: ``(V, 2)`` the template's sphere UVs in ``[−1, 1]``.
        texture: ``(3, Hu, Wu)`` the UV image, RGB in [0, 1]: the photo texture (``model.texture_from_photo``, the
            photo's colours through the predicted camera, as large as the input) or the texture head's.
        camera: ``(7,)`` ``[s, tx, ty, qw, qx, qy, qz]`` in the NDC of :attr:`crop`.
        crop: the network's input and where it lies in the photo (:class:`slopekp.predict.inputs.PhotoCrop`).
        head: the pose head that gave the camera.
        keypoints: ``(K, 2)`` the keypoint head's 2D keypoints in the crop's NDC (None for the other heads).
        z_offset: the renderer's depth offset the model was trained with.
    """

    verts: Tensor
    faces: Tensor
    verts_uv: Tensor
    texture: Tensor
    camera: Tensor
    crop: PhotoCrop
    head: str
    keypoints: Tensor | None = None
    z_offset: float = 5.0

    @property
    def mesh(self):
        """The textured mesh as a ``trimesh.Trimesh`` in the object frame (``docs/conventions.md``; :meth:`export`
        writes files upright instead); seam vertices are duplicated as in GLB export."""

        return textured_trimesh(self.verts, self.faces, self.verts_uv, self.texture)

    def view_camera(self, azimuth: float = 0.0, elevation: float = 0.0) -> Tensor:
        """``(7,)`` the predicted camera with the object turned by ``azimuth`` degrees about the image's vertical
        axis, then tilted by ``elevation`` degrees (:func:`slopekp.geometry.camera.turn_camera`)."""

        return turn_camera(self.camera, azimuth, elevation)

    @torch.no_grad()
    def render(self, view: Tensor | None = None, *, azimuth: float = 0.0, elevation: float = 0.0,
               textured: bool = True, size: int = 256, background=(1.0, 1.0, 1.0)) -> Tensor:  # fmt: skip
        """Render the mesh.

        Args:
            view: a ``(7,)`` camera in the crop's NDC; None (default) is the predicted camera turned by
                ``azimuth`` and ``elevation`` degrees (both 0: the photo's viewpoint).
            textured: with the predicted texture; else shaded in :data:`MESH_RGB`.
            size: the side of the square image; the crop's NDC is kept, so it lines up with the crop at any size.
            background: RGB in [0, 1] of empty pixels.

        Returns:
            ``(4, size, size)`` float RGBA in [0, 1] (alpha: the hard silhouette).
        """

        cam = self.view_camera(azimuth, elevation) if view is None else view.to(self.camera)
        if cam.shape != (7,):
            raise ValueError(f"view must be a (7,) camera, got shape {tuple(cam.shape)}")
        r = Renderer(RenderSettings(image_size=int(size), z_offset=self.z_offset))
        light = Lighting(ambient=0.55, directional=0.45)
        if textured:
            out = r(self.verts[None], self.faces, cam[None], mode="hard", uv_image=self.texture[None],
                    verts_uv=self.verts_uv, lighting=Lighting(ambient=0.8, directional=0.2))  # fmt: skip
        else:
            rgb = torch.tensor(MESH_RGB, device=self.verts.device).expand_as(self.verts)
            out = r(self.verts[None], self.faces, cam[None], mode="hard", verts_rgb=rgb[None], lighting=light)
        alpha = out.alpha[0]
        bg = torch.tensor(background, dtype=alpha.dtype, device=alpha.device)[:, None, None]
        rgb = out.rgb[0] * alpha + bg * (1 - alpha)
        return torch.cat([rgb.clamp(0, 1), alpha[None]])

    def mask(self, size: int | None = None) -> Tensor:
        """``(size, size)`` the hard silhouette under the predicted camera in the crop (default: the input size)."""
        return self.render(textured=False, size=size or self.crop.image.shape[0])[3]

    def photo_mask(self, size: int | None = None) -> np.ndarray:
        """``(H, W)`` bool: the silhouette pasted back into the photo, rendered at ``size``² (default: the crop's
        side in the photo's pixels, between the input size and 2048) and warped."""
        if size is None:
            side = int(self.crop.box[2] - self.crop.box[0] + 1)
            size = int(np.clip(side, self.crop.image.shape[0], 2048))
        return self.paste(self.mask(size)) > 0.5

    def paste(self, rendered: Tensor) -> np.ndarray:
        """A render of the crop, ``(size, size)`` or ``(C, size, size)`` at any ``size`` (e.g. :meth:`render`), warped
        into the photo: ``(H, W)`` or ``(H, W, C)`` float32, 0 where the crop does not reach."""

        img = rendered.detach().float().cpu()
        img = img.permute(1, 2, 0) if img.dim() == 3 else img
        # crop pixel u (NDC 2u/S - 1, the data's convention) is render pixel k·u - 1/2: the renderer samples pixel
        # centres, NDC (2u' + 1)/size - 1 (docs/conventions.md)
        k = img.shape[0] / self.crop.image.shape[0]
        to_render = self.crop.affine.then(PixelAffine(k, -0.5, -0.5))
        return paste_crop(img.numpy(), to_render, self.crop.photo_size)

    def camera_dict(self) -> dict[str, Any]:
        """The camera as JSON-ready values: the 7-vector, its rotation matrix, the viewpoint in degrees and the
        crop's box in the photo, with the conventions that read them."""

        cam = self.camera.detach().double().cpu()
        rot = quat_to_rotmat(cam[3:])
        az, el, cr = np.degrees(rotations_to_azelcr(rot[None].numpy()))[0]
        out = {
            "camera": [float(v) for v in cam],
            "camera_photo_px": [float(v) for v in self.photo_camera()],
            "rotation": rot.tolist(),
            "file_rotation": (rot @ torch.tensor(OBJECT_TO_FILE, dtype=rot.dtype).T).tolist(),
            "azimuth_deg": float(az),
            "elevation_deg": float(el),
            "cyclo_rotation_deg": float(cr),
            "head": self.head,
            "crop_box": [float(v) for v in self.crop.box],
            "crop_size": int(self.crop.image.shape[0]),
            "photo_to_crop_px": list(self.crop.affine),
            "box_source": self.crop.source,
            "photo_size": list(self.crop.photo_size),
            "z_offset": self.z_offset,
            "convention": "weak perspective [s, tx, ty, qw, qx, qy, qz]: p = s (R X)_xy + t, X in the object frame; "
            "camera: p in the NDC of the square crop (x right, y down, [-1, 1]; pixel u of the crop is "
            "2u/crop_size - 1); camera_photo_px: p in 0-based pixels of the photo; file_rotation: R for the "
            "coordinates of the exported mesh files (R times OBJECT_TO_FILE transposed); crop_box is [x1, y1, x2, y2] "
            "in 0-based photo pixels, inclusive; photo_to_crop_px is [k, ox, oy]: u_crop = k u + ox; see "
            "docs/conventions.md and docs/predict.md",
        }
        if self.keypoints is not None:
            kp = self.keypoints.detach().double().cpu()
            out["keypoints_ndc"] = kp.tolist()
            out["keypoints_photo_px"] = self._ndc_to_photo_px(kp).tolist()
        return out

    def _ndc_to_photo_px(self, points: Tensor) -> Tensor:
        """``(..., 2)`` crop NDC → 0-based photo pixels (inverse of ``u_crop = k u + o``, ``ndc = 2 u_crop/S − 1``)."""
        a, size = self.crop.affine, self.crop.image.shape[0]
        off = torch.tensor([a.ox, a.oy], dtype=points.dtype)
        return ((points + 1.0) * size / 2.0 - off) / a.k

    def crop_camera(self, camera_px: Tensor) -> Tensor:
        """``(7,)`` a camera in the photo's pixels → the crop's NDC, on the model's device (the inverse of
        :meth:`photo_camera`)."""

        a = self.crop.affine
        crop_px = affine_camera(camera_px, a.k, torch.tensor([a.ox, a.oy], dtype=camera_px.dtype))
        return px_to_ndc_camera(crop_px, float(self.crop.image.shape[0])).to(self.camera)

    def photo_camera(self) -> Tensor:
        """``(7,)`` the camera in 0-based pixels of the photo: ``p_px = s (R X)_xy + t`` (float64, on the CPU)."""

        a = self.crop.affine
        crop_px = ndc_to_px_camera(self.camera.detach().double().cpu(), float(self.crop.image.shape[0]))
        return affine_camera(crop_px, 1.0 / a.k, torch.tensor([-a.ox / a.k, -a.oy / a.k], dtype=torch.float64))

    def export(self, path: str | os.PathLike, *, y_up: bool = True) -> list[Path]:
        """Write the textured mesh; the suffix picks the format: ``.obj`` (+ ``.mtl`` + ``.png``), ``.glb`` or ``.ply``
        (shape only). Returns the files written, each atomically.

        Args:
            y_up: turn the object frame into the files' convention (:data:`OBJECT_TO_FILE`: +Y up, +Z the beak), so
                that viewers show the bird upright; False writes object-frame coordinates.
        """

        path = Path(path)
        verts = self.verts @ torch.tensor(OBJECT_TO_FILE, dtype=self.verts.dtype, device=self.verts.device).T
        verts = verts if y_up else self.verts
        if path.suffix.lower() == ".ply":
            return export_mesh(path, verts, self.faces)
        return export_mesh(path, verts, self.faces, self.verts_uv, self.texture.clamp(0, 1))


class Reconstructor:
    """A trained model ready for photos. Build it with :meth:`from_checkpoint`.

    Attributes:
        net: the network in eval mode. template: its :class:`slopekp.mesh.Template`. head: the pose head.
        cfg: the training run's config. card: the checkpoint's model card
        (:func:`slopekp.checkpoint.model_card`). device: where it runs.
    """

    def __init__(self, net: torch.nn.Module, template, cfg, head: str, card: dict | None = None) -> None:
        self.net, self.template, self.cfg, self.head = net.eval(), template, cfg, head
        self.card = card or {}

    @property
    def device(self) -> torch.device:
        return self.template.verts.device

    @property
    def image_size(self) -> int:
        """The side of the network's square input."""
        return int(self.cfg.model.image_size)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, device: str | torch.device = "auto",
                        template: str | None = None) -> Reconstructor:  # fmt: skip
        """Load a Stage III checkpoint safely (``weights_only=True``).

        Args:
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
            template: only for old checkpoints that do not carry their template (see
                :func:`slopekp.eval.report.load_trained_model`).

        Raises:
            FileNotFoundError, slopekp.checkpoint.CheckpointError: naming the file: missing, not a
                checkpoint, damaged, or not a trained model (Stage II and Stage I files are refused).
        """

        dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
        tm = load_trained_model(path, template=template, device=dev)
        return cls(tm.model, tm.template, tm.cfg, tm.head, tm.card)

    def prepare(self, image: Any, mask: Any = None, bbox: Any = None, *, name: str = "image",
                _stacklevel: int = 2) -> PhotoCrop:  # fmt: skip
        """Read ``image`` (and ``mask``) and crop it for the network (:mod:`slopekp.predict.inputs`).

        Warns:
            CropWarning: neither ``mask`` nor ``bbox`` was given, or the object's box (or, without either, the
                photo) is narrower than :data:`MIN_BOX_SIDE` pixels.
        """
        if isinstance(image, (str, os.PathLike)):
            name = str(image)
        photo = read_photo(image, name)
        size = (photo.shape[0], photo.shape[1])
        m = None if mask is None else read_mask(mask, size)
        box, source = object_box(size, m, bbox, name)
        if source == "whole image":
            warnings.warn(f"{name}: no mask or box given; reading the whole image as the object's crop",
                          CropWarning, stacklevel=_stacklevel)  # fmt: skip
            if min(size) < MIN_BOX_SIDE:
                warnings.warn(f"{name}: the photo is only {size[1]}x{size[0]} pixels, under {MIN_BOX_SIDE} on a side; "
                              "expect a poor reconstruction", CropWarning, stacklevel=_stacklevel)  # fmt: skip
        elif min(box[2] - box[0], box[3] - box[1]) + 1 < MIN_BOX_SIDE:
            warnings.warn(f"{name}: the object's box {box.tolist()} is under {MIN_BOX_SIDE} pixels on a side; "
                          "expect a poor reconstruction", CropWarning, stacklevel=_stacklevel)  # fmt: skip
        padding = 0.0 if source == "whole image" else float(self.cfg.data.padding_frac)
        crop = crop_photo(photo, box, self.image_size, padding, source)
        if self.net.texture_from_photo and TEXTURE_SIDE > self.image_size:  # the same square, at the texture's size
            crop = dataclasses.replace(crop, texture_image=crop_photo(photo, crop.box, TEXTURE_SIDE, 0.0, source).image)
        return crop

    @torch.no_grad()
    def predict_crops(self, crops: list[PhotoCrop]) -> list[Reconstruction]:
        """Run the network on prepared crops as one batch."""

        if not crops:
            return []
        img = torch.stack([torch.from_numpy(c.image).permute(2, 0, 1) for c in crops]).to(self.device)
        pred = self.net(normalize_image(img), photo=False)
        texture = pred.uv_image
        if self.net.texture_from_photo:  # the photo texture, read from the crops at the texture's side where made
            sharp = [c.texture_image if c.texture_image is not None else c.image for c in crops]
            if len({a.shape for a in sharp}) > 1:  # a batch with and without texture crops: read them all at S
                sharp = [c.image for c in crops]
            hi = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in sharp]).to(self.device)
            texture = self.net.photo_texture(normalize_image(hi), pred)
        t, kp = self.template, pred.pose_extras.get("points2d")
        return [Reconstruction(pred.verts[i], t.faces, t.verts_uv, texture[i], pred.camera[i], c, self.head,
                               None if kp is None else kp[i], float(self.cfg.render.z_offset))
                for i, c in enumerate(crops)]  # fmt: skip

    def predict(self, image: Any, mask: Any = None, bbox: Any = None) -> Reconstruction:
        """Reconstruct one photo.

        Args:
            image: a path, ``PIL.Image``, array or tensor (:func:`slopekp.predict.inputs.read_photo`).
            mask: the object's mask (a path or ``(H, W)`` array of the photo's size), or None.
            bbox: the object's box ``[x1, y1, x2, y2]`` (0-based, inclusive) or ``"x1,y1,x2,y2"``, or None.
                Without either, the whole photo is read (with a :class:`CropWarning`).

        Raises:
            ValueError: naming the file: unreadable image, mask of another size or empty, box outside the photo.
        """
        return self.predict_crops([self.prepare(image, mask, bbox, _stacklevel=3)])[0]
