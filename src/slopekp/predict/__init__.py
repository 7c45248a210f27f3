"""From a photo to a textured 3D mesh with a trained model (``slopekp predict`` and its Python API).

* :mod:`~slopekp.predict.inputs` — reading photos, masks and boxes, and the crop the network reads;
* :mod:`~slopekp.predict.api` — :class:`Reconstructor` (``from_checkpoint(path).predict(photo)``) and one photo's
  :class:`Reconstruction` (mesh, texture, camera, renders, export);
* :mod:`~slopekp.predict.outputs` — the files ``slopekp predict`` writes per photo (meshes, camera, mask, figure,
  turntable) and the folder's index that ``slopekp viewer`` shows.
"""

from slopekp.predict.api import CropWarning, Reconstruction, Reconstructor

__all__ = ["Reconstruction", "Reconstructor", "CropWarning"]
