"""Training: losses, the camera multiplex (per-image hypotheses, Stage I) and the training stages.

Submodules are imported on demand (``from slopekp.train.multiplex import CameraMultiplex``) so that importing
:mod:`slopekp.train` stays cheap.
"""
