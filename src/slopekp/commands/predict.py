"""``slopekp predict``: photos → textured meshes, cameras, masks, figures and turntables
(:mod:`slopekp.predict`). ``slopekp info``: a checkpoint's model card.

* ``slopekp predict IMAGE... --checkpoint CKPT [--mask M... | --bbox x1,y1,x2,y2 ...] --out DIR``
* ``slopekp info CKPT [--json]``

IMAGE may be a folder (its images, sorted by name; a broken symbolic link among them is reported as a failed
photo). ``--mask`` takes one mask per image, in order, or one folder holding ``<image stem>.png``; ``--bbox`` takes
one box per image (0-based pixels, inclusive corners). Without either, each image is read whole, with a warning. A
photo that fails (unreadable, a mask of another size, a box outside it ...) is reported and skipped; the others are
still written, and the exit status is 1.

OUT must be empty, missing, or a folder that ``slopekp predict`` made with the same checkpoint: a rerun there adds
its photos to the earlier ones (a photo predicted again is replaced; another photo with the same name gets a new
folder). Any other folder is refused: ``--overwrite`` empties it first, ``--force-new`` moves a predict folder of
another checkpoint aside to ``OUT.old-<time>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from slopekp.commands import add_command, add_output_dir_args

#: Suffixes of the images taken from a folder given as IMAGE.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def register(sub) -> None:
    p = add_command(
        sub, "predict", doc=__doc__,
        help="reconstruct photos with a trained model: textured OBJ/GLB, camera, mask, figure and turntable per photo",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="photos, or folders of photos")
    p.add_argument("--checkpoint", required=True, help="a trained model (Stage III OUT/checkpoints/last.pt)")
    p.add_argument("--out", required=True, help="output folder: OUT/<image stem>/ per photo and predictions.json")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--mask", nargs="+", action="extend", default=None, metavar="M",
                       help="the object's mask per image (in order), or one folder of <stem>.png masks")  # fmt: skip
    where.add_argument("--bbox", nargs="+", action="extend", default=None, metavar="x1,y1,x2,y2",
                       help="the object's box per image (in order), 0-based pixels, inclusive corners; a box with a "
                            "negative number is written --bbox=-5,0,90,80 (repeat --bbox= for more)")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=8, help="photos per network batch")
    p.add_argument("--size", type=int, default=256, help="side of the figures' panels and renders (pixels)")
    p.add_argument("--turntable-frames", type=int, default=36, help="frames of turntable.gif (0: none)")
    p.add_argument("--texture", choices=("photo", "head"), default=None,
                   help="photo: the bird's own colours through the predicted camera; head: the texture head's UV "
                        "image (default: the checkpoint's model.texture_from_photo, on unless trained with it off)")
    p.add_argument("--template", default=None,
                   help="the template mesh, only for old checkpoints that do not carry theirs")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_output_dir_args(p)
    p.set_defaults(func=_predict)

    i = add_command(
        sub, "info", doc=__doc__,
        help="print a checkpoint's model card: head, template, training data, metrics",
    )
    i.add_argument("checkpoint", metavar="CKPT", help="a slopekp checkpoint (Stage II or III)")
    i.add_argument("--json", action="store_true", help="print the card as JSON")
    i.set_defaults(func=_info)


def expand_images(items: list[str]) -> list[Path]:
    """IMAGE arguments → image paths (a folder gives its images with :data:`IMAGE_SUFFIXES`, sorted by name).
    Paths that do not exist are kept, to be reported with the other failures."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            # a symbolic link that leads nowhere (broken, a loop) is kept, to be reported as a failed photo
            found = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES
                           and (q.is_file() or (q.is_symlink() and not q.exists())))  # fmt: skip
            if not found:
                raise ValueError(f"{p}: a folder with no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    return out


def pair_inputs(images: list[Path], masks: list[str] | None, boxes: list[str] | None) -> list[tuple]:
    """``(mask, box)`` per image from ``--mask`` / ``--bbox`` (see the module docstring).

    Raises:
        ValueError: a count that matches neither one per image nor (masks) one folder.
    """
    n = len(images)
    if masks is not None:
        if len(masks) == 1 and Path(masks[0]).is_dir():
            folder = Path(masks[0])
            return [(folder / f"{img.stem}.png", None) for img in images]
        if len(masks) != n:
            raise ValueError(f"--mask: {len(masks)} mask(s) for {n} image(s); give one per image or one folder")
        return [(Path(m), None) for m in masks]
    if boxes is not None:
        if len(boxes) != n:
            raise ValueError(f"--bbox: {len(boxes)} box(es) for {n} image(s); give one x1,y1,x2,y2 per image, "
                             "with no spaces inside a box")  # fmt: skip
        return [(None, b) for b in boxes]
    return [(None, None)] * n


def _predict(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from slopekp.manifest import prepare_output_dir
    from slopekp.predict import CropWarning, Reconstructor
    from slopekp.predict.inputs import read_photo
    from slopekp.predict.outputs import (
        INDEX,
        predict_manifest,
        read_index,
        remove_outputs,
        unique_names,
        write_index,
        write_reconstruction,
    )
    from slopekp.utils import check_device_name, first_line

    for name, v, low in (("--batch-size", args.batch_size, 1), ("--size", args.size, 16),
                         ("--turntable-frames", args.turntable_frames, 0)):  # fmt: skip
        if v < low:
            raise ValueError(f"{name} must be >= {low}, got {v}")
    check_device_name(args.device)
    images = expand_images(args.images)
    pairs = pair_inputs(images, args.mask, args.bbox)
    rec = Reconstructor.from_checkpoint(args.checkpoint, device=args.device, template=args.template)
    if args.texture is not None:
        rec.net.texture_from_photo = args.texture == "photo"
    out = Path(args.out)
    reads = [*args.images, args.checkpoint, *(args.mask or [])]
    state = prepare_output_dir(out, predict_manifest(args.checkpoint, rec.head), overwrite=args.overwrite,
                               force_new=args.force_new, results=(INDEX,), inputs=reads)  # fmt: skip
    earlier = read_index(out) if state == "resume" else []
    names = unique_names(images, earlier=earlier)
    entries = [{"image": str(img), "name": name, "status": "pending", "error": None, "warnings": [], "files": []}
               for img, name in zip(images, names)]  # fmt: skip
    redone = {name.lower() for name in names}
    kept = [e for e in earlier if str(e.get("name", "")).lower() not in redone]
    card = rec.card
    bar = tqdm(total=len(images), unit="img", desc="predict", disable=args.quiet, dynamic_ncols=True)
    def fail(i: int, e: Exception) -> None:
        """Record photo ``i``'s failure, say it now, remove what an earlier run wrote for it, and go on (with
        ``--debug``, stop with the traceback instead)."""
        if args.debug:
            raise e
        msg = first_line(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {first_line(e)}"
        msg = msg if str(images[i]) in msg else f"{images[i]}: {msg}"
        entries[i].update(status="error", error=msg)
        remove_outputs(out / entries[i]["name"])
        tqdm.write(f"slopekp: failed: {msg}", file=sys.stderr)
        bar.update(1)

    for start in range(0, len(images), args.batch_size):
        chunk = range(start, min(start + args.batch_size, len(images)))
        crops, photos, ok = [], [], []
        for i in chunk:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", CropWarning)
                    photo = read_photo(images[i])
                    crop = rec.prepare(photo, *pairs[i], name=str(images[i]))
            except Exception as e:  # one bad photo must not stop the batch (MemoryError, a decoder's own errors)
                fail(i, e)
                continue
            for w in caught:
                tqdm.write(f"slopekp: warning: {w.message}", file=sys.stderr)
                entries[i]["warnings"].append(str(w.message))
            photos.append(photo)
            crops.append(crop)
            ok.append(i)
        for i, photo, r in zip(ok, photos, _predict_each(rec, crops, [images[k] for k in ok])):
            e = entries[i]
            if isinstance(r, Exception):
                fail(i, r)
                continue
            try:
                remove_outputs(out / e["name"])
                files = write_reconstruction(r, photo, out / e["name"], title=f"{images[i].name} ({rec.head} head)",
                                             size=args.size, turntable_frames=args.turntable_frames)  # fmt: skip
            except Exception as err:
                fail(i, err)
                continue
            e.update(status="ok", files=[str(f.relative_to(out)) for f in files], box_source=r.crop.source)
            bar.update(1)
        write_index(out, [*kept, *entries], checkpoint=args.checkpoint, card=card)
    bar.close()
    failed = sum(e["status"] != "ok" for e in entries)
    also = f"; the index also lists {len(kept)} photo(s) of earlier runs" if kept else ""
    print(f"wrote {len(entries) - failed} of {len(entries)} reconstruction(s) to {out}/ "
          f"({rec.head} head; index: {out / INDEX})" + (f"; {failed} failed" if failed else "") + also)
    return 1 if failed else 0


def _predict_each(rec, crops: list, names: list) -> list:
    """``rec.predict_crops(crops)`` as one batch, each result or, for a photo that failed, its exception: a batch
    that raises is run again photo by photo, so that one photo's failure does not fail its batch-mates, and a
    prediction with a NaN or infinite camera or vertex is an error that names its photo."""
    try:
        results = rec.predict_crops(crops)
    except Exception:
        results = []
        for crop, name in zip(crops, names):
            try:
                results.append(rec.predict_crops([crop])[0])
            except Exception as e:
                err = ValueError(f"{name}: the network failed on this photo ({type(e).__name__}: {e})")
                err.__cause__ = e  # --debug shows the original traceback
                results.append(err)
    return [r if isinstance(r, Exception) or (r.camera.isfinite().all() and r.verts.isfinite().all())
            else ValueError(f"{name}: the network's prediction is not finite (NaN or infinite camera or shape)")
            for r, name in zip(results, names)]  # fmt: skip


def format_card(card: dict, path: str) -> str:
    """The model card as lines for a person."""
    from slopekp.mesh.load import TEMPLATE_NAMES

    kind = card.get("kind")
    usable = "yes" if kind == "stage3" else "no (a Stage II model has no trained pose head)"
    lines = [f"checkpoint  {path}", f"kind        {kind}, usable by `slopekp predict`: {usable}"]
    lines.append(f"pose head   {card.get('head')}" + ("" if kind == "stage3" else " (configured, not trained)"))
    if card.get("targets"):
        lines.append(f"targets     {card['targets']}")
    t = card.get("template") or {}
    size = f", {t['num_verts']} vertices, {t['num_faces']} faces" if "num_verts" in t else ""
    where = ("embedded" if t.get("embedded") else "built in" if t.get("path") in TEMPLATE_NAMES
             else "not embedded: loads from that path")  # fmt: skip
    lines.append(f"template    {t.get('path')} (fingerprint {t.get('fingerprint')}{size}, {where})")
    d = card.get("data") or {}
    if d:
        extra = ", ".join(f"{k} {d[k]}" for k in ("split", "images", "fingerprint") if d.get(k) is not None)
        name = f"{d['name']} at " if d.get("name") else ""
        lines.append(f"data        {name}{d.get('path')} ({extra})")
    tr = card.get("trained") or {}
    lines.append(f"trained     {tr.get('epochs')} epoch(s), {tr.get('steps')} step(s) by `slopekp "
                 f"{card.get('command')}`, slopekp {card.get('slopekp_version')}, {card.get('created')}")  # fmt: skip
    m = card.get("metrics")
    if m:
        rot = m.get("rotation_error", {})
        lines.append(f"metrics     on {m.get('num_images')} {m.get('split', 'test')} images: mask IoU "
                     f"{m.get('mask_iou_0.5', float('nan')):.3f} (at 0.5), rotation error median "
                     f"{rot.get('median_deg', float('nan')):.1f}°, {rot.get('pct_under_30deg', float('nan')):.0f}% "
                     "under 30°")  # fmt: skip
    else:
        lines.append("metrics     none recorded (no test split with ground truth, or an older checkpoint)")
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    from slopekp.checkpoint import load_checkpoint, model_card

    card = model_card(load_checkpoint(args.checkpoint, map_location="cpu"))
    if args.json:
        from slopekp.predict.outputs import jsonable

        print(json.dumps(jsonable(card), indent=2))
    else:
        print(format_card(card, args.checkpoint))
    return 0
