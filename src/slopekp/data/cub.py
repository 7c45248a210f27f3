"""CUB-200-2011 in CMR's format (and SynthBirds, written in the same format): the training dataset.

Reads ``root/<split>_cub_cleaned.mat`` (+ ``root/anno_<split>.mat`` for ground-truth cameras) and the
images under ``root/images/`` (or ``images_dir``, e.g. ``CUB_200_2011/images``), and runs the per-sample
pipeline of METHOD §1.2:

1. read the image as **RGB** float in [0, 1] (grayscale → 3 channels; the CMR family fed BGR, we do not);
2. bbox and visible keypoints to 0-based; SfM ``trans`` to 0-based too (CMR forgot this, a 1 px error);
3. pad by ``padding_frac`` and jitter by ``jitter_frac`` (train split only unless forced);
4. square the box; 5. crop (outside: image 1 = white, mask 0);
6. bilinear resize to ``img_size`` (the mask stays soft);
7. mirror with probability 0.5 (train split only unless forced); 8. NDC keypoints and camera;
9. mask distance transform ``EDT(1 − (mask > 0.5)) / max(H, W)``;
10. appearance augmentation when given (:mod:`slopekp.data.augment`: pixel values only, from a stream of its own).

Camera bookkeeping is exact (see :mod:`slopekp.data.transforms`): the crop and resize are one isotropic
pixel map ``u' = k·u + o``; the ground-truth camera is moved through the same map, mirrored in pixel
space (``tx' = W − 1 − tx``, qy and qz negated) and converted to NDC (``x = 2u/W − 1``). Projecting the
SfM shape with ``Sample.gt_camera`` therefore lands on ``Sample.kp``. Note that with the corner
convention ``x = 2u/W − 1`` an image mirror is ``x' = −x − 2/W``: ``gt_camera`` of a flipped sample
differs from ``reflect_camera`` of the unflipped one by ``2/W`` in ``tx`` (one pixel; the originals
ignored this).

Randomness (jitter, flip) is drawn from ``np.random.default_rng([seed, epoch, index])`` (the appearance
augmentation from ``[seed, epoch, index, 1]``, so it changes no geometric draw): deterministic
and identical in any number of DataLoader workers; call :meth:`CubDataset.set_epoch` every epoch for
fresh augmentations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from torch import Tensor

from slopekp.data import transforms as T
from slopekp.data.augment import Augment, augment_appearance, inpaint_background
from slopekp.data.matfiles import (
    CubRecord,
    MatFileError,
    SfmAnnotations,
    check_mask_matches_image,
    cub_record_problems,
    read_cub_cleaned,
    read_image,
    read_sfm_anno,
    sfm_anno_problems,
)
from slopekp.geometry.camera import affine_camera, camera_from_sfm, px_to_ndc_camera, reflect_camera_px
from slopekp.utils import to_device

#: A mirrored sample of dataset index ``i`` has id ``FLIP_ID_BASE − i`` (METHOD §0).
FLIP_ID_BASE = 10**6


@dataclass
class Sample:
    """One item of :class:`CubDataset` (see the module docstring for the conventions).

    Attributes:
        img: (3, H, W) float32 RGB in [0, 1].
        mask: (H, W) float32 in [0, 1] (bilinearly resized, not re-binarised).
        mask_dt: (H, W) float32 ``EDT(1 − (mask > 0.5)) / max(H, W)``, 0 inside the mask.
        kp: (15, 3) float32 NDC x, y (y down) and visibility; invisible rows are all zero.
        crop: (3,) float32 ``[a, bx, by]``: the UNflipped crop's map original-image px (0-based) -> NDC,
            ``ndc = a·u + b``.
        index: dataset index i (unflipped).
        id: i, or 10**6 − i when flipped.
        flipped: whether the sample was mirrored.
        gt_camera: (7,) float32 NDC camera ``[s, tx, ty, qw, qx, qy, qz]`` of THIS (possibly flipped) crop,
            or None unless the dataset was built with ``return_gt_camera=True``.
        img_path: the image file.
    """

    img: Tensor
    mask: Tensor
    mask_dt: Tensor
    kp: Tensor
    crop: Tensor
    index: int
    id: int
    flipped: bool
    gt_camera: Tensor | None
    img_path: str


@dataclass
class Batch:
    """:class:`Sample` fields stacked along a leading batch dimension B.

    img (B, 3, H, W), mask (B, H, W), mask_dt (B, H, W), kp (B, 15, 3), crop (B, 3), index (B,) int64,
    id (B,) int64, flipped (B,) bool, gt_camera (B, 7) or None, img_path list[str].
    """

    img: Tensor
    mask: Tensor
    mask_dt: Tensor
    kp: Tensor
    crop: Tensor
    index: Tensor
    id: Tensor
    flipped: Tensor
    gt_camera: Tensor | None
    img_path: list[str]

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor moved to ``device``. Copies from the host to an accelerator do not wait for
        the device's queue (``non_blocking``: the host's data is staged before the call returns); copies to the
        host do."""
        moved = {
            f.name: (
                to_device(getattr(self, f.name), device)
                if isinstance(getattr(self, f.name), Tensor)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return Batch(**moved)

    def __len__(self) -> int:
        return int(self.img.shape[0])


def require_images(dataset: CubDataset) -> CubDataset:
    """``dataset`` itself; a :class:`MatFileError` naming the split's file when it has no images (training needs
    some)."""
    if len(dataset) == 0:
        raise MatFileError(f"{dataset.root / f'{dataset.split}_cub_cleaned.mat'}: the split {dataset.split!r} has "
                           f"no images")  # fmt: skip
    return dataset


def collate_samples(samples: list[Sample]) -> Batch:
    """Stack samples into a :class:`Batch` (pass as ``DataLoader(collate_fn=collate_samples)``).

    Raises:
        ValueError: empty list, or some samples carry ``gt_camera`` and others do not.
    """
    if not samples:
        raise ValueError("collate_samples needs at least one sample")
    has_cam = [s.gt_camera is not None for s in samples]
    if any(has_cam) and not all(has_cam):
        raise ValueError("collate_samples: some samples have gt_camera and others do not")
    return Batch(
        img=torch.stack([s.img for s in samples]),
        mask=torch.stack([s.mask for s in samples]),
        mask_dt=torch.stack([s.mask_dt for s in samples]),
        kp=torch.stack([s.kp for s in samples]),
        crop=torch.stack([s.crop for s in samples]),
        index=torch.tensor([s.index for s in samples], dtype=torch.int64),
        id=torch.tensor([s.id for s in samples], dtype=torch.int64),
        flipped=torch.tensor([s.flipped for s in samples], dtype=torch.bool),
        gt_camera=torch.stack([s.gt_camera for s in samples]) if all(has_cam) else None,
        img_path=[s.img_path for s in samples],
    )


def mask_distance_transform(mask: np.ndarray) -> np.ndarray:
    """mask: (H, W) float in [0, 1] -> (H, W) float32 ``EDT(1 − (mask > 0.5)) / max(H, W)``, 0 inside.

    An empty mask has no nearest mask pixel: its transform is 1 everywhere.
    """
    inside = mask > 0.5
    if not inside.any():
        return np.ones(mask.shape, dtype=np.float32)
    return (distance_transform_edt(~inside) / max(mask.shape)).astype(np.float32)


def parts_to_keypoints(parts: np.ndarray) -> np.ndarray:
    """CMR ``parts`` (3, 15) 1-based ``[x; y; vis]`` -> (15, 3) 0-based ``[u, v, vis]``, invisible rows 0."""
    kp = np.asarray(parts, dtype=np.float64).T.copy()
    vis = kp[:, 2] > 0
    kp[vis, :2] -= 1.0
    kp[~vis] = 0.0
    kp[vis, 2] = 1.0
    return kp


def sfm_camera_px(anno: SfmAnnotations, i: int) -> Tensor:
    """The (7,) float64 pixel camera of entry ``i`` in **0-based** original-image pixels (``trans − 1``)."""
    rot = torch.as_tensor(anno.rot[i], dtype=torch.float64)
    scale = torch.as_tensor(anno.scale[i], dtype=torch.float64)
    trans = torch.as_tensor(anno.trans[i] - 1.0, dtype=torch.float64)
    return camera_from_sfm(rot, scale, trans)


class CubDataset(torch.utils.data.Dataset):
    """CUB / SynthBirds images in CMR format, cropped around the bird (see the module docstring).

    Args:
        root: folder with ``<split>_cub_cleaned.mat``, optionally ``anno_<split>.mat``, and ``images/``.
        split: ``train``, ``val``, ``test``, ``testval`` (any name whose files exist).
        img_size: side of the square output crop in pixels.
        padding_frac, jitter_frac: bbox padding and jitter, fractions of the box size (METHOD §1.2 step 3).
        flip: random mirroring with p = 0.5. ``None`` (default): on the train split only; ``True``: on every
            split (forced); ``False``: never.
        jitter: bbox jitter. ``None``: train split only; ``True``: every split (forced); ``False``: never.
        seed: base seed of the per-sample RNG ``default_rng([seed, epoch, index])``.
        return_gt_camera: also return the SfM camera of each crop (needs ``anno_<split>.mat``).
        max_items: use only the first ``max_items`` samples (0 = all).
        images_dir: images folder (default ``root/images``).
        sfm_dir: folder with ``anno_<split>.mat`` (default ``root``; CMR keeps them in ``cachedir/cub/sfm``).
        augment: appearance augmentation (:class:`~slopekp.data.augment.Augment`) applied to every sample, or None.
            The caller decides the split (training sets only); the mask, keypoints and camera do not change.
        cache_bytes: keep up to this many bytes of decoded images in memory (uint8, the first ones read), so that
            later epochs do not decode them again (0 = none). Samples are the same either way; each DataLoader
            worker process holds a cache of its own.

    Raises:
        MatFileError (a ValueError): missing or malformed annotation files, an ``anno`` file whose length
            differs from the cleaned file, or annotation values that would break a sample (checked for the
            records in use, vectorised: a NaN/inf or empty bbox, an empty mask, a non-finite visible keypoint;
            with ``return_gt_camera`` a non-finite camera), naming the file, the record index and its image.
            Missing/corrupt images and mask-size mismatches are raised by ``__getitem__`` naming the image
            file (use :meth:`validate` to check every item up front, or ``slopekp data verify``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        img_size: int = 256,
        padding_frac: float = 0.05,
        jitter_frac: float = 0.05,
        flip: bool | None = None,
        seed: int = 0,
        return_gt_camera: bool = False,
        max_items: int = 0,
        images_dir: str | os.PathLike | None = None,
        jitter: bool | None = None,
        sfm_dir: str | os.PathLike | None = None,
        cache_bytes: int = 0,
        augment: Augment | None = None,
    ) -> None:
        super().__init__()
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if padding_frac < 0 or jitter_frac < 0:
            raise ValueError(f"padding_frac and jitter_frac must be >= 0, got {padding_frac}, {jitter_frac}")
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.cache_bytes = int(cache_bytes)
        self.augment = augment if augment is not None and augment.active else None
        self._images: dict[int, np.ndarray] = {}  # decoded images kept by read_rgb (index -> read-only uint8)
        self._cached_bytes = 0
        self.root = Path(root)
        if not self.root.is_dir():
            raise MatFileError(f"dataset root {self.root} is not a directory")
        self.split = split
        self.img_size = int(img_size)
        self.padding_frac = float(padding_frac)
        self.jitter_frac = float(jitter_frac)
        is_train = split == "train"
        self.flip = is_train if flip is None else bool(flip)
        self.jitter = is_train if jitter is None else bool(jitter)
        self.seed = int(seed)
        self.epoch = 0
        self.return_gt_camera = bool(return_gt_camera)
        self.images_dir = Path(images_dir) if images_dir is not None else self.root / "images"
        self.records: list[CubRecord] = read_cub_cleaned(self.root / f"{split}_cub_cleaned.mat")
        self.sfm: SfmAnnotations | None = None
        anno_path = (Path(sfm_dir) if sfm_dir is not None else self.root) / f"anno_{split}.mat"
        if anno_path.is_file():
            self.sfm = read_sfm_anno(anno_path)
            if len(self.sfm) != len(self.records):
                raise MatFileError(
                    f"{anno_path}: {len(self.sfm)} cameras but {self.root / f'{split}_cub_cleaned.mat'} has "
                    f"{len(self.records)} images"
                )
        elif self.return_gt_camera:
            raise MatFileError(f"{anno_path}: file not found (needed for return_gt_camera=True)")
        if max_items:
            self.records = self.records[:max_items]
        self._check_annotation_values(anno_path)

    def _check_annotation_values(self, anno_path: Path) -> None:
        """Raise :class:`MatFileError` on the first annotation value of the records in use that would break a
        sample (see the class docstring), naming the file, the record and its image."""
        n = len(self.records)
        bad = cub_record_problems(self.root / f"{self.split}_cub_cleaned.mat", self.records, fatal_only=True)
        if self.return_gt_camera and self.sfm is not None:
            used = SfmAnnotations(self.sfm.rot[:n], self.sfm.scale[:n], self.sfm.trans[:n])
            bad += sfm_anno_problems(anno_path, used, [r.rel_path for r in self.records], fatal_only=True)
        if bad:
            more = f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
            raise MatFileError(f"{bad[0]}{more}; `slopekp data verify --root {self.root}` lists every problem")

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of ``epoch`` (jitter and flips change, deterministically)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path:
        return self.images_dir / self.records[i].rel_path

    def read_rgb(self, i: int) -> np.ndarray:
        """Image ``i`` as RGB ``(H, W, 3)`` uint8 (:func:`~slopekp.data.matfiles.read_image`), from the memory
        cache when it holds it (``cache_bytes``); do not modify it in place."""
        img = self._images.get(i)
        if img is None:
            img = read_image(self.image_path(i))
            if self._cached_bytes + img.nbytes <= self.cache_bytes:
                img.setflags(write=False)
                self._images[i] = img
                self._cached_bytes += img.nbytes
        return img

    def validate(self) -> None:
        """Read every image and check it against its mask (raises :class:`MatFileError` naming the file)."""
        for i in range(len(self)):
            check_mask_matches_image(self.records[i].mask, read_image(self.image_path(i)), self.image_path(i))

    def _read_crop(self, i: int, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Image ``i`` and its mask cut at the square ``bbox`` and resized to ``img_size``: ``(S, S, 3)``, ``(S, S)``
        float32 (outside the image: white, mask 0)."""
        img = self.read_rgb(i).astype(np.float32) / 255.0
        check_mask_matches_image(self.records[i].mask, img, self.image_path(i))
        mask = self.records[i].mask.astype(np.float32)
        img = T.resize_square(T.crop(img, bbox, fill=1.0), self.img_size)
        return img, T.resize_square(T.crop(mask, bbox, fill=0.0), self.img_size)

    def _other_background(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """Another image's (drawn from ``rng``, never ``i``) padded square crop with its bird filled in."""
        j = int(rng.integers(len(self) - 1))
        j += j >= i
        bbox = T.square_bbox(T.perturb_bbox(self.records[j].bbox - 1.0, self.padding_frac, 0.0))
        return inpaint_background(*self._read_crop(j, bbox))

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} samples")
        rec = self.records[i]
        path = self.image_path(i)
        rng = np.random.default_rng([self.seed, self.epoch, i])

        bbox = T.perturb_bbox(
            rec.bbox - 1.0, self.padding_frac, self.jitter_frac, rng if self.jitter else None
        )
        bbox = T.square_bbox(bbox)
        side = int(bbox[2] - bbox[0] + 1)
        affine = T.crop_affine(bbox).then(T.resize_affine(side, self.img_size))
        img, mask = self._read_crop(i, bbox)
        kp = T.transform_keypoints(parts_to_keypoints(rec.parts), affine)
        kp = T.clip_keypoints(kp, self.img_size, self.img_size)
        crop = T.crop_to_ndc_params(affine, self.img_size)

        flipped = bool(self.flip and rng.uniform() < 0.5)
        if flipped:
            img, mask = T.flip_image(img), T.flip_image(mask)
            kp = T.flip_keypoints(kp, self.img_size)
        kp = T.keypoints_to_ndc(kp, self.img_size)
        if self.augment is not None:
            arng = np.random.default_rng([self.seed, self.epoch, i, 1])
            other = (lambda: self._other_background(i, arng)) if len(self) > 1 else None
            img = augment_appearance(img, mask, arng, self.augment, other)

        gt_camera = None
        if self.return_gt_camera:
            assert self.sfm is not None  # checked in __init__
            cam = affine_camera(
                sfm_camera_px(self.sfm, i),
                affine.k,
                torch.tensor([affine.ox, affine.oy], dtype=torch.float64),
            )
            if flipped:
                cam = reflect_camera_px(cam, self.img_size)
            gt_camera = px_to_ndc_camera(cam, self.img_size).float()

        return Sample(
            img=torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).clamp_(0, 1),
            mask=torch.from_numpy(np.ascontiguousarray(mask)).clamp_(0, 1),
            mask_dt=torch.from_numpy(mask_distance_transform(mask)),
            kp=torch.from_numpy(kp.astype(np.float32)),
            crop=torch.from_numpy(crop.astype(np.float32)),
            index=i,
            id=FLIP_ID_BASE - i if flipped else i,
            flipped=flipped,
            gt_camera=gt_camera,
            img_path=str(path),
        )
