"""slopekp: self-supervised single-image 3D reconstruction of deformable categories.

Pose from a keypoint network + PnP (SLOPE-KP) beside quaternion / 6D / 9D regression heads, on the U-CMR recipe
(template mesh, camera multiplex, differentiable rendering), in pure PyTorch. See ``docs/conventions.md``.
"""

import os as _os

# Our hot loops (the rasteriser) are many short tensor ops. With OpenMP's default "active" waiting, a thread that
# finds the other core busy spins at every barrier and a 2-core laptop under any other load runs them 10-70x
# slower (measured: soft16_64 went from 0.055 s to 4.0 s). Passive waiting costs nothing measurable when idle.
# It only takes effect if set before torch loads its OpenMP runtime; an explicit user setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
