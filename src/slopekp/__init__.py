"""slopekp: self-supervised single-image 3D reconstruction of deformable categories.

Pose from a keypoint network + PnP (SLOPE-KP) beside quaternion / 6D / 9D regression heads, on the U-CMR recipe
(template mesh, camera multiplex, differentiable rendering), in pure PyTorch. See ``docs/conventions.md``.
"""

__version__ = "0.1.0"
