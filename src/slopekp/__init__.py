"""slopekp: self-supervised single-image 3D reconstruction of deformable categories.

Pose from a keypoint network + PnP (SLOPE-KP) beside quaternion / 6D / 9D regression heads, on the U-CMR recipe
(template mesh, camera multiplex, differentiable rendering), in pure PyTorch. See ``docs/conventions.md``.
"""

import os as _os

# Our hot loops (the rasteriser) are many short tensor ops. With OpenMP's default busy-waiting, a thread that
# finds the other core busy spins at every barrier: on a 2-core machine under other load the renderer ran up to
# 70x slower (soft16_64: 0.055 s -> 4.0 s). Passive waiting keeps it at ~0.06 s under load, for ~20% on an idle
# machine (0.046 s -> 0.056 s). It only takes effect if set before torch loads its OpenMP runtime; an explicit
# OMP_WAIT_POLICY=ACTIVE from the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from slopekp.version import __version__ as __version__  # noqa: E402 (after the environment default above)


def __getattr__(name: str):
    # ``from slopekp import Reconstructor``, without importing torch for ``slopekp --help``
    if name in ("Reconstructor", "Reconstruction", "CropWarning"):
        from slopekp import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'slopekp' has no attribute {name!r}")
