"""DAVIS 2017 and YouTube-VOS readers: sequences, frames and per-object masks (DATA.md §6–7).

Both readers return the same :class:`VideoSequence`: the frame file names, the image and annotation paths
and the objects of one video. Nothing is decoded until asked for (:meth:`VideoSequence.load_image`,
:meth:`VideoSequence.load_masks`), so opening a dataset only lists folders and reads one annotation per
sequence.

Annotations are read with :func:`read_label_png` and written with :func:`save_label_png` (:func:`label_image`:
the ids as a palette image with DAVIS's VOC colours, :func:`voc_palette`).

Conventions
-----------
- Images are RGB ``(3, H, W)`` float32 in [0, 1] (the package convention; grayscale JPEGs become RGB).
- Annotations are palette ('P' mode) PNGs whose pixel value is the object id: 0 background, 1..254 objects,
  :data:`VOID_LABEL` = 255 void (DAVIS marks ambiguous regions with it; YouTube-VOS has none). They are
  read with ``np.array(Image.open(p))``, never converted to RGB. Object ``k``'s mask is ``labels == k``;
  void pixels belong to no object and are returned separately in :attr:`FrameMasks.void`, so that a metric
  can exclude or keep them.
- **DAVIS object count** (the official davis2017-evaluation rule): a sequence has ``K = max id in the first
  annotation frame`` objects (void ignored), with ids ``1..K``. An id that only appears later and is larger
  than ``K`` is ignored; an id ``≤ K`` absent from the first frame is still an object (empty first mask).
- **YouTube-VOS**: the objects and their categories come from ``meta.json``
  (``{"videos": {vid: {"objects": {"<id>": {"category": str, "frames": [...]}}}}}``); the id is the PNG
  pixel value. Frame names are the 30 fps frame numbers of every 5th frame (``00000, 00005, …``, not
  necessarily starting at 0); :attr:`VideoSequence.frame_numbers` parses them. In ``train`` every listed
  frame has an annotation; in ``valid``/``test`` only the frame where an object first appears does, and
  that PNG holds only the objects that start there (:meth:`VideoSequence.first_appearances`).

Errors (all ``ValueError`` naming the file or folder): a missing folder or ``ImageSets`` list, a
frame/annotation count or name mismatch, a non-palette PNG, an annotation whose size differs from its
frame, a malformed ``meta.json``.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: Annotation value of void pixels (DAVIS); they belong to no object.
VOID_LABEL = 255
#: DAVIS sequences with birds (blackswan is in val; the others are DAVIS-2016 train sequences, DATA.md §6).
DAVIS_BIRD_SEQUENCES = ("blackswan", "flamingo", "mallard-fly", "mallard-water")
#: YouTube-VOS categories treated as birds (DATA.md §7).
YTVOS_BIRD_CATEGORIES = ("bird", "duck", "eagle", "owl", "parrot", "penguin")


@dataclass(frozen=True)
class VideoObject:
    """One annotated object of a sequence.

    Attributes:
        id: the annotation pixel value (1..254).
        category: the YouTube-VOS category, ``None`` for DAVIS.
        first_frame: frame index of the object's initial annotation: for DAVIS the first annotated frame,
            for every object (its mask there may be empty); for YouTube-VOS the first frame of its
            ``meta.json`` list. ``None`` when meta.json lists no frame for it.
    """

    id: int
    category: str | None
    first_frame: int | None


@dataclass(frozen=True)
class FrameMasks:
    """The decoded annotation of one frame.

    Attributes:
        frame_index: index into the sequence's frames.
        object_ids: ``(K,)`` ids, in the order of ``masks``.
        masks: ``(K, H, W)`` float32 in {0, 1}: ``masks[k] = (labels == object_ids[k])``; void pixels are 0.
        void: ``(H, W)`` bool, the pixels labelled :data:`VOID_LABEL`.
        labels: ``(H, W)`` uint8, the raw annotation.
    """

    frame_index: int
    object_ids: tuple[int, ...]
    masks: torch.Tensor
    void: torch.Tensor
    labels: np.ndarray

    def present(self) -> tuple[bool, ...]:
        """``(K,)`` whether object ``k`` has at least one pixel in this frame."""
        return tuple(bool(m.any()) for m in self.masks)


@dataclass(frozen=True)
class ObjectStart:
    """Where an object first appears: its id, frame index and ``(H, W)`` float32 {0, 1} mask there."""

    object_id: int
    frame_index: int
    mask: torch.Tensor


@dataclass(frozen=True)
class VideoSequence:
    """One video: frames, optional per-frame annotations and its objects. Decodes lazily.

    Attributes:
        name: sequence name (DAVIS) or video id (YouTube-VOS).
        frame_names: ``(T,)`` file stems, e.g. ``"00000"``.
        image_paths: ``(T,)`` JPEG paths.
        annotation_paths: ``(T,)`` PNG paths, ``None`` where the frame has no annotation.
        objects: the annotated objects, sorted by id.
    """

    name: str
    frame_names: tuple[str, ...]
    image_paths: tuple[Path, ...]
    annotation_paths: tuple[Path | None, ...]
    objects: tuple[VideoObject, ...]

    def __len__(self) -> int:
        return len(self.frame_names)

    @property
    def object_ids(self) -> tuple[int, ...]:
        return tuple(o.id for o in self.objects)

    @property
    def frame_numbers(self) -> tuple[int, ...]:
        """``(T,)`` integer frame numbers parsed from the names (``"00005"`` → 5)."""
        return tuple(_frame_number(n, p) for n, p in zip(self.frame_names, self.image_paths))

    @property
    def annotated(self) -> tuple[bool, ...]:
        """``(T,)`` whether each frame has an annotation file."""
        return tuple(p is not None for p in self.annotation_paths)

    def frame_size(self, index: int = 0) -> tuple[int, int]:
        """``(H, W)`` of frame ``index``, read from the image header only."""
        with _open_image(self.image_paths[index]) as im:
            return im.height, im.width

    def load_image(self, index: int) -> torch.Tensor:
        """Frame ``index`` as a ``(3, H, W)`` float32 RGB tensor in [0, 1]."""
        with _open_image(self.image_paths[index]) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(torch.float32) / 255.0

    def load_labels(self, index: int) -> np.ndarray:
        """The raw ``(H, W)`` uint8 annotation of frame ``index`` (object ids, 0 background, 255 void).

        Raises:
            ValueError: the frame has no annotation; the PNG is not palette mode; its size differs from the
                frame.
        """
        path = self.annotation_paths[index]
        if path is None:
            raise ValueError(
                f"sequence {self.name!r}: frame {self.frame_names[index]} has no annotation "
                f"(annotated frames: {[n for n, a in zip(self.frame_names, self.annotated) if a][:10]})"
            )
        return read_label_png(path, expected_size=self.frame_size(index))

    def load_masks(self, index: int) -> FrameMasks:
        """Per-object masks of frame ``index`` for this sequence's objects (see :class:`FrameMasks`)."""
        labels = self.load_labels(index)
        ids = self.object_ids
        lab = torch.from_numpy(labels.astype(np.int64))
        if ids:
            masks = (lab[None] == torch.tensor(ids, dtype=torch.int64)[:, None, None]).to(torch.float32)
        else:
            masks = torch.zeros((0, *labels.shape), dtype=torch.float32)
        return FrameMasks(index, ids, masks, lab == VOID_LABEL, labels)

    def first_appearances(self) -> list[ObjectStart]:
        """Each object's mask in its ``first_frame`` (the semi-supervised initialisation)."""
        starts = []
        cache: dict[int, np.ndarray] = {}
        for obj in self.objects:
            if obj.first_frame is None:
                continue
            if obj.first_frame not in cache:
                cache[obj.first_frame] = self.load_labels(obj.first_frame)
            mask = torch.from_numpy(cache[obj.first_frame] == obj.id).to(torch.float32)
            starts.append(ObjectStart(obj.id, obj.first_frame, mask))
        return starts


# ------------------------------------------------------------------------------------------------------------
# file helpers
# ------------------------------------------------------------------------------------------------------------


def _open_image(path: Path) -> Image.Image:
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e


def _frame_number(name: str, path: Path) -> int:
    if not name.isdigit():
        raise ValueError(f"{path}: frame name {name!r} is not a frame number (expected digits, e.g. 00005)")
    return int(name)


def read_label_png(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a palette annotation PNG as an ``(H, W)`` uint8 array of object ids (255 = void).

    Args:
        path: the PNG.
        expected_size: ``(H, W)`` of the matching frame; a different annotation size is an error.

    Raises:
        ValueError: naming ``path``, when it is not a palette ('P' mode) PNG or its size differs.
    """
    path = Path(path)
    with _open_image(path) as im:
        if im.mode != "P":
            raise ValueError(
                f"{path}: annotation must be a palette ('P' mode) PNG whose values are object ids, got mode "
                f"{im.mode!r} (an RGB rendering of the masks cannot be read as ids)"
            )
        if expected_size is not None and (im.height, im.width) != tuple(expected_size):
            raise ValueError(
                f"{path}: annotation size {im.height}x{im.width} (HxW) differs from its frame's "
                f"{expected_size[0]}x{expected_size[1]}"
            )
        return np.array(im, dtype=np.uint8)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map of DAVIS annotations: 768 ints, RGB of ids 0..255 (255 → (224, 224, 192))."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def label_image(labels: np.ndarray) -> Image.Image:
    """``(H, W)`` uint8 object ids as a palette ('P') image with the VOC colours of DAVIS annotations (what
    :func:`read_label_png` reads back)."""
    im = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    im.putpalette(voc_palette())
    return im


def save_label_png(path: Path, labels: np.ndarray) -> None:
    """Write ``(H, W)`` uint8 ``labels`` as a palette PNG (VOC colours)."""
    label_image(labels).save(path, format="PNG")


def _list_stems(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with a suffix in ``suffixes`` (any case), sorted."""
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes), key=lambda p: p.stem
    )
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise ValueError(
                f"{folder}: two files share the frame name {p.stem!r} ({out[p.stem].name}, {p.name})"
            )
        out[p.stem] = p
    return out


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ValueError(f"{what} not found: {path} is not a folder")
    return path


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"sequence list not found: {path}")
    names = [ln.strip() for ln in path.read_text().splitlines()]
    return [n for n in names if n]


def _sequence_files(
    img_dir: Path, ann_dir: Path, check: Callable[[dict[str, Path], dict[str, Path]], None]
) -> tuple[tuple[str, ...], tuple[Path, ...], tuple[Path | None, ...]]:
    """The frames of one sequence: names, JPEG paths and PNG annotation paths (``None`` where a frame has none).

    Refuses a folder without JPEG frames, then runs the reader's own ``check(frames, annotations)`` (``{stem:
    path}`` each), then refuses an annotation without a matching frame.
    """
    frames = _list_stems(img_dir, (".jpg", ".jpeg"))
    anns = _list_stems(ann_dir, (".png",))
    if not frames:
        raise ValueError(f"{img_dir}: no JPEG frames")
    check(frames, anns)
    extra = sorted(set(anns) - set(frames))
    if extra:
        raise ValueError(
            f"{ann_dir / (extra[0] + '.png')}: annotation without a matching frame in {img_dir}"
        )
    names = tuple(frames)
    return names, tuple(frames.values()), tuple(anns.get(n) for n in names)


def davis_object_ids(first_labels: np.ndarray) -> tuple[int, ...]:
    """The official DAVIS rule: ids ``1..K`` with ``K`` the maximum non-void id of the first annotation.

    Args:
        first_labels: ``(H, W)`` uint8 first annotation frame.
    """
    lab = first_labels[first_labels != VOID_LABEL]
    k = int(lab.max()) if lab.size else 0
    return tuple(range(1, k + 1))


# ------------------------------------------------------------------------------------------------------------
# DAVIS 2017
# ------------------------------------------------------------------------------------------------------------


class _SequenceCollection(abc.ABC):
    """Sequence-name list with lazy :class:`VideoSequence` access; subclasses set ``sequences`` and ``sequence``."""

    sequences: tuple[str, ...]

    @abc.abstractmethod
    def sequence(self, name: str) -> VideoSequence:
        """Build the :class:`VideoSequence` of ``name``."""

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[VideoSequence]:
        for name in self.sequences:
            yield self.sequence(name)

    def __getitem__(self, key: int | str) -> VideoSequence:
        return self.sequence(self.sequences[key] if isinstance(key, int) else key)


class DavisDataset(_SequenceCollection):
    """DAVIS 2017 (or 2016) in its official layout, listed by ``ImageSets/<year>/<split>.txt``.

    Args:
        root: the ``DAVIS`` folder (holding ``JPEGImages``, ``Annotations``, ``ImageSets``), or its parent.
        split: ``train``, ``val`` (or any list in ``ImageSets/<year>/``).
        resolution: ``480p`` or ``Full-Resolution``.
        year: ``2017`` or ``2016`` (the ImageSets subfolder).
        annotations: ``Annotations`` (semi-supervised) or ``Annotations_unsupervised``.
        require_all_annotations: every frame must have an annotation with the same name (trainval); set False
            for test-dev, where only the first frame is annotated.

    ``dataset.sequences`` lists the names (cheap); ``dataset[name]`` or ``dataset[i]`` builds a
    :class:`VideoSequence` (lists two folders and reads the first annotation to count the objects).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        resolution: str = "480p",
        year: str = "2017",
        annotations: str = "Annotations",
        require_all_annotations: bool = True,
    ) -> None:
        root = Path(root)
        if not (root / "JPEGImages").is_dir() and (root / "DAVIS" / "JPEGImages").is_dir():
            root = root / "DAVIS"
        self.root = root
        self.image_root = _require_dir(root / "JPEGImages" / resolution, "DAVIS frames folder")
        self.annotation_root = _require_dir(root / annotations / resolution, "DAVIS annotations folder")
        self.split = split
        self.require_all_annotations = require_all_annotations
        self.sequences: tuple[str, ...] = tuple(_read_list(root / "ImageSets" / str(year) / f"{split}.txt"))

    def sequence(self, name: str) -> VideoSequence:
        """Build the :class:`VideoSequence` of ``name`` (see the class docstring for the checks)."""
        img_dir = _require_dir(self.image_root / name, f"frames of DAVIS sequence {name!r}")
        ann_dir = _require_dir(self.annotation_root / name, f"annotations of DAVIS sequence {name!r}")

        def check(frames: dict[str, Path], anns: dict[str, Path]) -> None:
            if not anns:
                raise ValueError(f"{ann_dir}: no PNG annotations")
            if self.require_all_annotations and len(frames) != len(anns):
                raise ValueError(
                    f"{ann_dir}: {len(anns)} annotations for {len(frames)} frames in {img_dir} "
                    "(DAVIS trainval annotates every frame; pass require_all_annotations=False for test-dev)"
                )

        names, image_paths, ann_paths = _sequence_files(img_dir, ann_dir, check)
        first = next(i for i, p in enumerate(ann_paths) if p is not None)
        seq = VideoSequence(name, names, image_paths, ann_paths, ())
        ids = davis_object_ids(seq.load_labels(first))
        # first_frame: the first annotated frame, where DAVIS defines every object (its mask may be empty)
        objects = tuple(VideoObject(i, None, first) for i in ids)
        return VideoSequence(name, names, seq.image_paths, ann_paths, objects)


# ------------------------------------------------------------------------------------------------------------
# YouTube-VOS
# ------------------------------------------------------------------------------------------------------------


class YouTubeVOSDataset(_SequenceCollection):
    """One YouTube-VOS (2018/2019) split: ``<root>/<split>/{JPEGImages,Annotations}/<video>/``, ``meta.json``.

    Args:
        root: the folder holding ``train/``, ``valid/`` …, or the split folder itself.
        split: ``train``, ``valid`` or ``test``.
        categories: keep only videos with at least one object of these categories (e.g.
            :data:`YTVOS_BIRD_CATEGORIES`); ``None`` keeps all.

    Videos are those listed in ``meta.json`` (sorted). Frames are the JPEGs of the video folder; an annotation
    must have a matching frame. Each object's ``first_frame`` is the first frame of its ``meta.json`` list.
    """

    def __init__(
        self, root: str | Path, split: str = "train", categories: Sequence[str] | None = None
    ) -> None:
        root = Path(root)
        split_dir = root / split if (root / split).is_dir() else root
        if not (split_dir / "JPEGImages").is_dir() and not (split_dir / "meta.json").is_file():
            raise ValueError(
                f"YouTube-VOS split folder not found: neither {root / split} nor {root} holds "
                "JPEGImages/ and meta.json"
            )
        self.split_dir = split_dir
        self.split = split
        self.image_root = _require_dir(split_dir / "JPEGImages", "YouTube-VOS frames folder")
        self.annotation_root = _require_dir(split_dir / "Annotations", "YouTube-VOS annotations folder")
        self.meta = read_ytvos_meta(split_dir / "meta.json")
        names = sorted(self.meta)
        if categories is not None:
            cats = set(categories)
            names = [v for v in names if any(c in cats for c, _ in self.meta[v].values())]
        self.sequences: tuple[str, ...] = tuple(names)

    def sequence(self, name: str) -> VideoSequence:
        """Build the :class:`VideoSequence` of video ``name`` (lists folders; decodes nothing)."""
        if name not in self.meta:
            raise ValueError(f"{self.split_dir / 'meta.json'}: no video {name!r}")
        img_dir = _require_dir(self.image_root / name, f"frames of YouTube-VOS video {name!r}")
        ann_dir = _require_dir(self.annotation_root / name, f"annotations of YouTube-VOS video {name!r}")

        def check(frames: dict[str, Path], anns: dict[str, Path]) -> None:
            for n, p in frames.items():
                _frame_number(n, p)

        names, image_paths, ann_paths = _sequence_files(img_dir, ann_dir, check)
        index = {n: i for i, n in enumerate(names)}
        objects = []
        for oid, (category, obj_frames) in sorted(self.meta[name].items()):
            first = None
            if obj_frames:
                f0 = obj_frames[0]
                if f0 not in index:
                    raise ValueError(
                        f"{self.split_dir / 'meta.json'}: video {name!r} object {oid} starts at frame "
                        f"{f0!r}, which is not in {img_dir}"
                    )
                if ann_paths[index[f0]] is None:
                    raise ValueError(
                        f"{ann_dir}: no annotation {f0}.png for the first frame of object {oid} (meta.json)"
                    )
                first = index[f0]
            objects.append(VideoObject(oid, category, first))
        return VideoSequence(name, names, image_paths, ann_paths, tuple(objects))


def read_ytvos_meta(path: str | Path) -> dict[str, dict[int, tuple[str, tuple[str, ...]]]]:
    """Parse a YouTube-VOS ``meta.json`` into ``{video: {object_id: (category, frames)}}``.

    Raises:
        ValueError: naming ``path`` when the file is missing, not JSON, or lacks ``videos``/``objects``, or an
            object id is not an integer in 1..254.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"YouTube-VOS meta.json not found: {path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    videos = raw.get("videos") if isinstance(raw, dict) else None
    if not isinstance(videos, dict):
        raise ValueError(f"{path}: expected a top-level object with a 'videos' mapping")
    out: dict[str, dict[int, tuple[str, tuple[str, ...]]]] = {}
    for vid, entry in videos.items():
        objs = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(objs, dict):
            raise ValueError(f"{path}: video {vid!r} has no 'objects' mapping")
        parsed: dict[int, tuple[str, tuple[str, ...]]] = {}
        for key, obj in objs.items():
            if not str(key).isdigit() or not 1 <= int(key) < VOID_LABEL:
                raise ValueError(f"{path}: video {vid!r} has object id {key!r}; ids are integers 1..254")
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: video {vid!r} object {key} is not a mapping")
            frames = obj.get("frames", [])
            if not isinstance(frames, list):
                raise ValueError(
                    f"{path}: video {vid!r} object {key}: 'frames' must be a list of frame names"
                )
            parsed[int(key)] = (str(obj.get("category", "")), tuple(str(f) for f in frames))
        out[str(vid)] = parsed
    return out
