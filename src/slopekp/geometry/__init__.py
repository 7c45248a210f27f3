"""Geometry: pure functions on tensors, no ``nn`` state.

* :mod:`slopekp.geometry.rotations`: quaternions ``(w, x, y, z)``, rotation matrices, axis-angle, 6D, 9D,
  azimuth/elevation/cyclo-rotation, geodesic angles, uniform sampling.
* :mod:`slopekp.geometry.camera`: the weak-perspective camera ``[s, tx, ty, qw, qx, qy, qz]``: projection,
  mirror, pixel/NDC and crop bookkeeping, SfM cameras.
* :mod:`slopekp.geometry.pnp`: PnP (robust initialiser and differentiable weighted orthographic PnP).

Import from the submodules, e.g. ``from slopekp.geometry.rotations import quat_to_rotmat``.
"""
