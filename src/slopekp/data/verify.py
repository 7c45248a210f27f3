"""Check a dataset folder and report what is missing (``slopekp data verify --root DIR [--kind ...]``).

Four kinds (DATA.md §2–4, §6–7):

- ``cmr``: a folder in CMR's per-split format, as :class:`slopekp.data.cub.CubDataset` reads it (SynthBirds,
  or CMR's ``cachedir/cub/data`` with ``--images-dir``): every ``<split>_cub_cleaned.mat`` parses with all
  its fields, every image it lists exists with the size its mask has (headers only), and an
  ``anno_<split>.mat`` beside it, if any, has one camera per image.

- ``cub``: the raw CUB-200-2011 folder (``CUB_200_2011/`` with ``images.txt``, ``bounding_boxes.txt``,
  ``train_test_split.txt``, ``parts/``, and every image ``images.txt`` lists) **and** the CMR annotations
  (``<split>_cub_cleaned.mat`` and ``anno_<split>.mat`` for train/val/test, looked for under
  ``cachedir/cub/{data,sfm}`` (the U-CMR archive), ``cub/{data,sfm}`` or ``data/cub/{data,sfm}``).
- ``davis``: DAVIS 2017 at 480p: both ImageSets lists, and per sequence its frames, one palette annotation
  per frame with the frame's size (headers only: nothing is decoded).
- ``youtubevos``: every split folder present (``train``, ``valid``, ``test``): ``meta.json``, each video's
  frames, the first-appearance annotation of every object (palette, frame-sized), numeric frame names; in
  ``train`` an annotation for every frame.

``auto`` picks the kind from the folder's contents. A :class:`VerifyReport` separates *problems* (the
dataset is incomplete or broken: exit status 1) from *notes* (counts and remarks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from slopekp.data.video import DAVIS_BIRD_SEQUENCES, YTVOS_BIRD_CATEGORIES, DavisDataset, YouTubeVOSDataset

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
        ValueError: naming ``root`` when it does not exist or matches no kind.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
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
    raise ValueError(
        f"{root}: could not tell which dataset this is (no DAVIS JPEGImages+ImageSets, no YouTube-VOS "
        "meta.json, no CUB_200_2011 or CMR annotations); pass --kind cmr|cub|davis|youtubevos"
    )


def verify_dataset(root: str | Path, kind: str = "auto", images_dir: str | Path | None = None) -> VerifyReport:
    """Check the dataset in ``root`` (see the module docstring for what each kind checks).

    Raises:
        ValueError: ``root`` does not exist, ``kind`` is unknown, or ``auto`` cannot tell the kind.
    """
    root = Path(root)
    if kind not in (*KINDS, "auto"):
        raise ValueError(f"kind must be one of {', '.join(KINDS)} or auto, got {kind!r}")
    if not root.is_dir():
        raise ValueError(f"dataset folder not found: {root}")
    if kind == "auto":
        kind = detect_kind(root)
    problems: list[str] = []
    notes: list[str] = []
    if kind == "cmr":
        _verify_cmr(root, Path(images_dir) if images_dir else root / "images", problems, notes)
    else:
        {"cub": _verify_cub, "davis": _verify_davis, "youtubevos": _verify_ytvos}[kind](root, problems, notes)
    return VerifyReport(kind, root, tuple(problems), tuple(notes))


# ------------------------------------------------------------------------------------------------------------
# CUB + CMR annotations
# ------------------------------------------------------------------------------------------------------------


def _verify_cmr(root: Path, images_dir: Path, problems: list[str], notes: list[str]) -> None:
    from slopekp.data.matfiles import read_cub_cleaned, read_sfm_anno

    splits = sorted(p.name[: -len("_cub_cleaned.mat")] for p in root.glob("*_cub_cleaned.mat"))
    if not splits:
        problems.append(f"no <split>_cub_cleaned.mat in {root}")
        return
    for split in splits:
        try:
            records = read_cub_cleaned(root / f"{split}_cub_cleaned.mat")
        except ValueError as e:  # MatFileError names the file and the field
            problems.append(str(e))
            continue
        present = 0
        for r in records:
            path = images_dir / r.rel_path
            if not path.is_file():
                problems.append(f"missing image {path} (listed in {split}_cub_cleaned.mat)")
                continue
            try:
                with Image.open(path) as im:
                    size = im.size
            except OSError as e:
                problems.append(f"{path}: not a readable image ({e})")
                continue
            if r.mask.shape != (size[1], size[0]):
                mh, mw = r.mask.shape
                problems.append(f"{path}: image is {size[0]}x{size[1]} but its mask is {mw}x{mh}")
                continue
            present += 1
        notes.append(f"{split}: {present} of {len(records)} images present and matching their masks")
        anno = root / f"anno_{split}.mat"
        if anno.is_file():
            try:
                n = len(read_sfm_anno(anno))
            except ValueError as e:
                problems.append(str(e))
                continue
            if n != len(records):
                problems.append(f"{anno}: {n} cameras for {len(records)} images")
            else:
                notes.append(f"{split}: {n} ground-truth cameras in {anno.name}")


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


def _check_annotation_headers(seq, problems: list[str]) -> None:
    """Palette mode and frame size of every annotation of ``seq`` (headers only)."""
    for i, path in enumerate(seq.annotation_paths):
        if path is None:
            continue
        try:
            with Image.open(path) as im:
                mode, size = im.mode, (im.height, im.width)
            hw = seq.frame_size(i)
        except (OSError, ValueError) as e:
            problems.append(f"{path}: unreadable ({e})")
            continue
        if mode != "P":
            problems.append(f"{path}: annotation is mode {mode!r}, not a palette ('P') PNG")
        elif size != hw:
            problems.append(
                f"{path}: annotation size {size[0]}x{size[1]} differs from its frame's {hw[0]}x{hw[1]}"
            )


def _verify_davis(root: Path, problems: list[str], notes: list[str]) -> None:
    davis = root / "DAVIS" if not (root / "JPEGImages").is_dir() and (root / "DAVIS").is_dir() else root
    n_frames, names = 0, set()
    for split in ("train", "val"):
        try:
            ds = DavisDataset(davis, split=split)
        except ValueError as e:
            problems.append(str(e))
            continue
        notes.append(f"{split}: {len(ds)} sequences")
        for name in ds.sequences:
            names.add(name)
            try:
                seq = ds.sequence(name)
            except ValueError as e:
                problems.append(str(e))
                continue
            n_frames += len(seq)
            _check_annotation_headers(seq, problems)
    notes.append(f"{n_frames} frames checked")
    birds = [s for s in DAVIS_BIRD_SEQUENCES if s in names]
    if birds:
        notes.append(f"bird sequences: {', '.join(birds)}")


def _verify_ytvos(root: Path, problems: list[str], notes: list[str]) -> None:
    splits = [s for s in YTVOS_SPLITS if (root / s).is_dir()]
    targets = [(s, root / s) for s in splits] if splits else [(root.name, root)]
    for split, folder in targets:
        try:
            ds = YouTubeVOSDataset(folder, split)
        except ValueError as e:
            problems.append(str(e))
            continue
        n_frames, n_birds = 0, 0
        for name in ds.sequences:
            try:
                seq = ds.sequence(name)
                numbers = seq.frame_numbers
            except ValueError as e:
                problems.append(str(e))
                continue
            n_frames += len(seq)
            n_birds += any(o.category in YTVOS_BIRD_CATEGORIES for o in seq.objects)
            if any((b - a) % 5 for a, b in zip(numbers, numbers[1:])):
                notes.append(f"{split}/{name}: frame numbers do not step by multiples of 5")
            if split == "train":
                missing = [n for n, a in zip(seq.frame_names, seq.annotated) if not a]
                if missing:
                    problems.append(
                        f"{ds.annotation_root / name}: no annotation for {len(missing)} frame(s), e.g. "
                        f"{missing[0]}.png (train annotates every frame)"
                    )
            _check_annotation_headers(seq, problems)
        on_disk = {p.name for p in ds.image_root.iterdir() if p.is_dir()}
        unlisted = sorted(on_disk - set(ds.meta))
        if unlisted:
            notes.append(f"{split}: {len(unlisted)} video folder(s) not in meta.json, e.g. {unlisted[0]}")
        notes.append(f"{split}: {len(ds)} videos ({n_birds} with birds), {n_frames} frames")
