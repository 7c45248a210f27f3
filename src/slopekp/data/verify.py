"""Check a dataset folder and report what is missing or broken (``slopekp data verify --root DIR [--kind ...]``).

Four kinds (DATA.md §2–4, §6–7):

- ``cmr``: a folder in CMR's per-split format, as :class:`slopekp.data.cub.CubDataset` reads it (SynthBirds,
  or CMR's ``cachedir/cub/data`` with ``--images-dir``): every ``<split>_cub_cleaned.mat`` parses with all
  its fields; every image it lists exists, **decodes** (PIL open + load: a truncated JPEG fails here) and has
  its mask's size; every record's annotation values are sane (:func:`slopekp.data.matfiles.cub_record_problems`:
  mask non-empty with values in 0..1, bbox finite, non-empty and mostly inside the image, visible keypoints
  finite and inside the image); an ``anno_<split>.mat`` beside it, if any, has one finite camera (a rotation,
  positive scale) per image (:func:`slopekp.data.matfiles.sfm_anno_problems`).

- ``cub``: the raw CUB-200-2011 folder (``CUB_200_2011/`` with ``images.txt``, ``bounding_boxes.txt``,
  ``train_test_split.txt``, ``parts/``, and every image ``images.txt`` lists) **and** the CMR annotations
  (``<split>_cub_cleaned.mat`` and ``anno_<split>.mat`` for train/val/test, looked for under
  ``cachedir/cub/{data,sfm}`` (the U-CMR archive), ``cub/{data,sfm}`` or ``data/cub/{data,sfm}``). Files are
  checked for presence only (check the CMR annotations with ``--kind cmr``).
- ``davis``: DAVIS 2017 at 480p: both ImageSets lists, and per sequence its frames (each decoded), one
  palette annotation per frame (decoded) with the frame's size.
- ``youtubevos``: every split folder present (``train``, ``valid``, ``test``): ``meta.json``, each video's
  frames (decoded), the first-appearance annotation of every object (palette, frame-sized, decoded), numeric
  frame names; in ``train`` an annotation for every frame.

``quick=True`` (``--quick``) decodes nothing: images and annotation PNGs are checked from their headers
(existence, mode, size). The ``.mat`` annotation values are checked in both modes (they are read anyway).

``auto`` picks the kind from the folder's contents; a folder that is missing or matches no kind raises
:class:`NotADatasetError`. A :class:`VerifyReport` separates *problems* (the dataset is incomplete or broken:
exit status 1) from *notes* (counts and remarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from slopekp.data.matfiles import cub_record_problems, read_cub_cleaned, read_sfm_anno, sfm_anno_problems
from slopekp.data.video import (
    DAVIS_BIRD_SEQUENCES,
    YTVOS_BIRD_CATEGORIES,
    DavisDataset,
    VideoSequence,
    YouTubeVOSDataset,
)

KINDS = ("cmr", "cub", "davis", "youtubevos")
#: CUB-200-2011 files besides the images (DATA.md §2).
CUB_FILES = (
    "images.txt",
    "bounding_boxes.txt",
    "train_test_split.txt",
    "parts/parts.txt",
    "parts/part_locs.txt",
)
CUB_N_IMAGES = 11788
CMR_SPLITS = ("train", "val", "test")
YTVOS_SPLITS = ("train", "valid", "test")
#: What :func:`detect_kind` looks for, for the "not a recognised dataset folder" message.
KIND_SIGNS = (
    "cmr (<split>_cub_cleaned.mat)",
    "davis (JPEGImages/ and ImageSets/, or DAVIS/ holding them)",
    "youtubevos (meta.json or train|valid|test/meta.json)",
    "cub (CUB_200_2011/, images.txt or cachedir/cub/{data,sfm})",
)


class NotADatasetError(ValueError):
    """The folder to verify does not exist, or ``auto`` recognises no dataset kind in it."""


@dataclass(frozen=True)
class VerifyReport:
    """The result of :func:`verify_dataset`.

    Attributes:
        kind: ``cmr``, ``cub``, ``davis`` or ``youtubevos``.
        root: the folder checked.
        problems: what is missing or broken, one line each (empty = complete).
        notes: counts and remarks that do not make the dataset incomplete.
    """

    kind: str
    root: Path
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self, max_problems: int = 20) -> str:
        """A human-readable report listing at most ``max_problems`` problems."""
        lines = [f"{self.kind} dataset at {self.root}"]
        lines += [f"  {n}" for n in self.notes]
        if self.ok:
            lines.append("complete: no problems found")
        else:
            lines.append(f"INCOMPLETE: {len(self.problems)} problem(s)")
            lines += [f"  - {p}" for p in self.problems[:max_problems]]
            if len(self.problems) > max_problems:
                lines.append(f"  ... and {len(self.problems) - max_problems} more")
        return "\n".join(lines)


def detect_kind(root: str | Path) -> str:
    """Guess the dataset kind of ``root`` from its contents.

    Raises:
        NotADatasetError: naming ``root`` when it does not exist or matches no kind.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADatasetError(f"dataset folder not found: {root}")
    if any(root.glob("*_cub_cleaned.mat")):  # before YouTube-VOS: SynthBirds has a meta.json too
        return "cmr"
    for d in (root, root / "DAVIS"):
        if (d / "JPEGImages").is_dir() and (d / "ImageSets").is_dir():
            return "davis"
    if (root / "meta.json").is_file() or any((root / s / "meta.json").is_file() for s in YTVOS_SPLITS):
        return "youtubevos"
    if (
        (root / "CUB_200_2011").is_dir()
        or (root / "images.txt").is_file()
        or _find_cmr_dirs(root) is not None
    ):
        return "cub"
    raise NotADatasetError(
        f"not a recognised dataset folder: {root} (expected one of: {'; '.join(KIND_SIGNS)}); "
        "pass --kind cmr|cub|davis|youtubevos to check it as one of them"
    )


def verify_dataset(
    root: str | Path,
    kind: str = "auto",
    images_dir: str | Path | None = None,
    *,
    quick: bool = False,
    progress: bool = False,
) -> VerifyReport:
    """Check the dataset in ``root`` (see the module docstring for what each kind checks).

    Args:
        root: the dataset folder.
        kind: ``cmr``, ``cub``, ``davis``, ``youtubevos`` or ``auto`` (:func:`detect_kind`).
        images_dir: ``cmr`` kind: the images folder (default ``root/images``).
        quick: read image headers only (existence, mode, size) instead of decoding every image.
        progress: a tqdm progress bar (stderr) over the images of each split.

    Raises:
        NotADatasetError: ``root`` does not exist, or ``auto`` cannot tell the kind.
        ValueError: ``kind`` is unknown.
    """
    root = Path(root)
    if kind not in (*KINDS, "auto"):
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or auto, got {kind!r}")
    if not root.is_dir():
        raise NotADatasetError(f"dataset folder not found: {root}")
    if kind == "auto":
        kind = detect_kind(root)
    problems: list[str] = []
    notes: list[str] = []
    if kind == "cmr":
        _verify_cmr(root, Path(images_dir) if images_dir else root / "images", problems, notes, quick, progress)
    elif kind == "cub":
        _verify_cub(root, problems, notes)
    else:
        {"davis": _verify_davis, "youtubevos": _verify_ytvos}[kind](root, problems, notes, quick, progress)
    return VerifyReport(kind, root, tuple(problems), tuple(notes))


def _check_image(path: Path, decode: bool, problems: list[str]) -> tuple[str, tuple[int, int]] | None:
    """``(mode, (H, W))`` of the image ``path`` from its header, after decoding every pixel when ``decode``;
    ``None`` (and a problem naming ``path``) when it cannot be opened or decoded."""
    try:
        im = Image.open(path)
    except Exception as e:  # PIL raises several types for bad files
        problems.append(f"{path}: not a readable image ({type(e).__name__}: {e})")
        return None
    with im:
        info = im.mode, (im.height, im.width)
        if decode:
            try:
                im.load()
            except Exception as e:  # truncated (OSError), broken chunks (SyntaxError), zlib errors, ...
                problems.append(f"{path}: truncated or corrupt image ({type(e).__name__}: {e})")
                return None
    return info


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    """A transient bar on stderr when ``enabled`` and stderr is a terminal (never in logs or pipes)."""
    return tqdm(total=total, desc=desc, unit="img", disable=None if enabled else True, leave=False)


# ------------------------------------------------------------------------------------------------------------
# CUB + CMR annotations
# ------------------------------------------------------------------------------------------------------------


def _verify_cmr(
    root: Path, images_dir: Path, problems: list[str], notes: list[str], quick: bool, progress: bool
) -> None:
    splits = sorted(p.name[: -len("_cub_cleaned.mat")] for p in root.glob("*_cub_cleaned.mat"))
    if not splits:
        problems.append(f"no <split>_cub_cleaned.mat in {root}")
        return
    for split in splits:  # one split at a time: a CUB split's masks take about 1 GB
        mat = root / f"{split}_cub_cleaned.mat"
        try:
            records = read_cub_cleaned(mat)
        except ValueError as e:  # MatFileError names the file and the field
            problems.append(str(e))
            continue
        present = 0
        with _progress(len(records), f"{split}: {'reading' if quick else 'decoding'} images", progress) as bar:
            for r in records:
                bar.update(1)
                path = images_dir / r.rel_path
                if not path.is_file():
                    problems.append(f"missing image {path} (listed in {mat.name})")
                    continue
                info = _check_image(path, not quick, problems)
                if info is None:
                    continue
                if r.mask.shape != info[1]:
                    (h, w), (mh, mw) = info[1], r.mask.shape
                    problems.append(f"{path}: image is {w}x{h} but its mask is {mw}x{mh}")
                    continue
                present += 1
        how = "present, decoded and matching their masks"
        if quick:
            how = "present and matching their masks (headers only: --quick)"
        notes.append(f"{split}: {present} of {len(records)} images {how}")
        bad = cub_record_problems(mat, records)
        problems += bad
        notes.append(
            f"{split}: {len(bad)} problem(s) in the annotation values of {len(records)} records"
            if bad
            else f"{split}: annotation values of {len(records)} records valid (masks, bboxes, keypoints)"
        )
        anno = root / f"anno_{split}.mat"
        if anno.is_file():
            try:
                sfm = read_sfm_anno(anno)
            except ValueError as e:
                problems.append(str(e))
                continue
            if len(sfm) != len(records):
                problems.append(f"{anno}: {len(sfm)} cameras for {len(records)} images")
                continue
            bad = sfm_anno_problems(anno, sfm, [r.rel_path for r in records])
            problems += bad
            if not bad:
                notes.append(f"{split}: {len(sfm)} ground-truth cameras in {anno.name}")


def _find_cmr_dirs(root: Path) -> Path | None:
    for base in (root / "cachedir" / "cub", root / "cub", root / "data" / "cub"):
        if (base / "data").is_dir() or (base / "sfm").is_dir():
            return base
    return None


def _is_mat_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(6) == b"MATLAB"


def _verify_cub(root: Path, problems: list[str], notes: list[str]) -> None:
    cub = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    if not (cub / "images.txt").is_file() and not (cub / "images").is_dir():
        problems.append(
            f"CUB-200-2011 not found: no {root / 'CUB_200_2011'} (run `slopekp data fetch cub --root {root}`)"
        )
    else:
        for name in CUB_FILES:
            if not (cub / name).is_file():
                problems.append(f"missing {cub / name}")
        if (cub / "images.txt").is_file():
            rel = []
            for i, line in enumerate((cub / "images.txt").read_text().splitlines(), 1):
                parts = line.split()
                if len(parts) != 2:
                    problems.append(f"{cub / 'images.txt'}:{i}: expected '<id> <path>', got {line!r}")
                    continue
                rel.append(parts[1])
            missing = [r for r in rel if not (cub / "images" / r).is_file()]
            problems += [f"missing image {cub / 'images' / r}" for r in missing]
            notes.append(f"{cub}: {len(rel) - len(missing)} of {len(rel)} listed images present")
            if len(rel) != CUB_N_IMAGES:
                notes.append(f"images.txt lists {len(rel)} images; the full CUB-200-2011 has {CUB_N_IMAGES}")
    base = _find_cmr_dirs(root)
    if base is None:
        problems.append(
            "CMR annotations not found (cachedir/cub/data/*_cub_cleaned.mat, cachedir/cub/sfm/anno_*.mat): "
            f"run `slopekp data fetch ucmr-annotations --root {root}`"
        )
        return
    for split in CMR_SPLITS:
        for path in (base / "data" / f"{split}_cub_cleaned.mat", base / "sfm" / f"anno_{split}.mat"):
            if not path.is_file():
                problems.append(f"missing {path}")
            elif not _is_mat_file(path):
                problems.append(f"{path}: not a MATLAB .mat file")
    notes.append(f"CMR annotations in {base}")
    template = base.parent / "template_shape" / "bird_template.npy"
    if not template.is_file():
        notes.append(f"no U-CMR template at {template} (the built-in procedural template works without it)")


# ------------------------------------------------------------------------------------------------------------
# videos
# ------------------------------------------------------------------------------------------------------------


def _check_sequence(seq: VideoSequence, problems: list[str], quick: bool, bar: tqdm) -> None:
    """Every frame of ``seq`` decodes, and every annotation is a palette PNG of its frame's size that decodes
    (``quick``: headers only, and only the frames that have an annotation)."""
    for image_path, path in zip(seq.image_paths, seq.annotation_paths):
        frame = _check_image(image_path, True, problems) if not quick else None
        bar.update(1)
        if path is None:
            continue
        if quick:
            frame = _check_image(image_path, False, problems)
        label = _check_image(path, not quick, problems)
        if label is None or frame is None:
            continue
        (mode, size), hw = label, frame[1]
        if mode != "P":
            problems.append(f"{path}: annotation is mode {mode!r}, not a palette ('P') PNG")
        elif size != hw:
            problems.append(
                f"{path}: annotation size {size[0]}x{size[1]} differs from its frame's {hw[0]}x{hw[1]}"
            )


def _sequences(ds, problems: list[str]) -> list[VideoSequence]:
    """The sequences of ``ds`` that can be listed (a problem for each that cannot)."""
    out = []
    for name in ds.sequences:
        try:
            out.append(ds.sequence(name))
        except ValueError as e:
            problems.append(str(e))
    return out


def _verify_davis(root: Path, problems: list[str], notes: list[str], quick: bool, progress: bool) -> None:
    davis = root / "DAVIS" if not (root / "JPEGImages").is_dir() and (root / "DAVIS").is_dir() else root
    n_frames, names = 0, set()
    for split in ("train", "val"):
        try:
            ds = DavisDataset(davis, split=split)
        except ValueError as e:
            problems.append(str(e))
            continue
        notes.append(f"{split}: {len(ds)} sequences")
        names.update(ds.sequences)
        seqs = _sequences(ds, problems)
        total = sum(len(q) for q in seqs)
        with _progress(total, f"{split}: {'reading' if quick else 'decoding'} frames", progress) as bar:
            for seq in seqs:
                _check_sequence(seq, problems, quick, bar)
        n_frames += total
    notes.append(f"{n_frames} frames checked" + (" (headers only: --quick)" if quick else ", all decoded"))
    birds = [s for s in DAVIS_BIRD_SEQUENCES if s in names]
    if birds:
        notes.append(f"bird sequences: {', '.join(birds)}")


def _verify_ytvos(root: Path, problems: list[str], notes: list[str], quick: bool, progress: bool) -> None:
    splits = [s for s in YTVOS_SPLITS if (root / s).is_dir()]
    targets = [(s, root / s) for s in splits] if splits else [(root.name, root)]
    for split, folder in targets:
        try:
            ds = YouTubeVOSDataset(folder, split)
        except ValueError as e:
            problems.append(str(e))
            continue
        seqs = _sequences(ds, problems)
        n_frames, n_birds = 0, 0
        with _progress(
            sum(len(q) for q in seqs), f"{split}: {'reading' if quick else 'decoding'} frames", progress
        ) as bar:
            for seq in seqs:
                try:
                    numbers = seq.frame_numbers
                except ValueError as e:
                    problems.append(str(e))
                    bar.update(len(seq))
                    continue
                n_frames += len(seq)
                n_birds += any(o.category in YTVOS_BIRD_CATEGORIES for o in seq.objects)
                if any((b - a) % 5 for a, b in zip(numbers, numbers[1:])):
                    notes.append(f"{split}/{seq.name}: frame numbers do not step by multiples of 5")
                if split == "train":
                    missing = [n for n, a in zip(seq.frame_names, seq.annotated) if not a]
                    if missing:
                        problems.append(
                            f"{ds.annotation_root / seq.name}: no annotation for {len(missing)} frame(s), e.g. "
                            f"{missing[0]}.png (train annotates every frame)"
                        )
                _check_sequence(seq, problems, quick, bar)
        on_disk = {p.name for p in ds.image_root.iterdir() if p.is_dir()}
        unlisted = sorted(on_disk - set(ds.meta))
        if unlisted:
            notes.append(f"{split}: {len(unlisted)} video folder(s) not in meta.json, e.g. {unlisted[0]}")
        decoded = " (headers only: --quick)" if quick else ", all decoded"
        notes.append(f"{split}: {len(ds)} videos ({n_birds} with birds), {n_frames} frames{decoded}")
