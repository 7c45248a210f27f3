"""The predicted meshes of several checkpoints side by side, shaded, on the same photos (issue 24: smooth shapes).

For each photo (read whole, as ``slopekp predict`` reads a photo without a box or mask) and each checkpoint, the
mesh is rendered without its texture (so that no pixel of the photo is shown and the figure shows the shape
alone) from the predicted viewpoint turned by 30° and 60° about the vertical axis at 20° of elevation, and from
60° of elevation. One JSON line per checkpoint and photo: ``case`` (the checkpoint's label), ``photo``,
``normal_consistency`` (:func:`slopekp.eval.reconstruction.normal_consistency`; the procedural template 0.944),
``seconds``, ``peak_mb``, ``threads``, ``device``; and one figure (``--out``): a row per photo, and per checkpoint
the three views side by side.

Usage::

    python benchmarks/shape_gallery.py --checkpoint before=A/last.pt --checkpoint after=B/last.pt \\
        --out gallery.jpg PHOTO [PHOTO ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from _cases import peak_mb_since, rss_mb

VIEWS = ((30.0, 20.0), (60.0, 20.0), (0.0, 60.0))
"""(azimuth, elevation) in degrees, relative to the predicted viewpoint: U-CMR's demo views."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("photos", nargs="+", help="image files")
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="a Stage III checkpoint and its label in the figure (repeat for each model)",
    )
    p.add_argument("--out", required=True, help="the figure (.jpg or .png); an existing file is not replaced")
    p.add_argument("--size", type=int, default=160, help="side of each render")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    models = []
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            p.error(f"--checkpoint {item!r}: expected LABEL=PATH")
        models.append((label, Path(path)))
    out = Path(args.out)
    if out.exists():
        p.error(f"{out} exists: choose another --out (nothing is written over)")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from slopekp.eval.reconstruction import normal_consistency
    from slopekp.predict.api import CropWarning, Reconstructor
    from slopekp.utils import atomic_write

    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", CropWarning)  # each photo is read whole, on purpose
    rows = []
    for label, path in models:
        rss0 = rss_mb()
        try:
            rec = Reconstructor.from_checkpoint(path, device="cpu")
        except (ValueError, OSError) as e:  # a missing or damaged checkpoint, named
            p.error(str(e))
        for photo in args.photos:
            t0 = time.perf_counter()
            try:
                r = rec.predict(photo)
            except (ValueError, OSError) as e:  # an unreadable photo, named; no figure is written
                p.error(str(e))
            nc = float(normal_consistency(r.verts[None].float(), r.faces)[0])
            views = [r.render(azimuth=a, elevation=e, textured=False, size=args.size) for a, e in VIEWS]
            rows.append((label, Path(photo).name, nc, views))
            print(json.dumps({"case": label, "photo": Path(photo).name, "normal_consistency": round(nc, 3),
                              "seconds": round(time.perf_counter() - t0, 2), "peak_mb": peak_mb_since(rss0),
                              "threads": torch.get_num_threads(), "device": "cpu"}), flush=True)  # fmt: skip
    photos = list(dict.fromkeys(row[1] for row in rows))
    labels = [label for label, _ in models]
    cols = len(labels) * len(VIEWS)
    fig, axes = plt.subplots(len(photos), cols, figsize=(1.9 * cols, 2.0 * len(photos)), squeeze=False)
    for label, photo, nc, views in rows:  # a row per photo; per checkpoint, its views side by side
        first = labels.index(label) * len(VIEWS)
        for k, img in enumerate(views):
            ax = axes[photos.index(photo), first + k]
            ax.imshow(img[:3].permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_xlabel(f"normal consistency {nc:.2f}", fontsize=8)
        axes[photos.index(photo), 0].set_ylabel(photo, fontsize=8)
    for c in range(cols):
        az, el = VIEWS[c % len(VIEWS)]
        title = f"{labels[c // len(VIEWS)]}\n" if c % len(VIEWS) == 0 else "\n"
        axes[0, c].set_title(f"{title}az +{az:.0f}°, el {el:.0f}°", fontsize=8, loc="left")
    fig.tight_layout()
    with atomic_write(out) as tmp:
        fig.savefig(tmp, dpi=90, format=out.suffix.lstrip(".").replace("jpg", "jpeg"))
    plt.close(fig)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
