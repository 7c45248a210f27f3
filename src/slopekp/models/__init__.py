"""The reconstruction network: image → shape, texture and camera (METHOD §4).

Only ``nn.Module``s and the plain results they return live here; :mod:`slopekp.models` imports geometry, mesh
and render, never ``train`` or ``config``.

* :mod:`~slopekp.models.base` — the results every module returns (:class:`~slopekp.models.base.EncoderOutput`,
  :class:`~slopekp.models.base.PoseOutput`, :class:`~slopekp.models.base.Prediction`), shared by training,
  evaluation, predict and video;
* :mod:`~slopekp.models.encoder` — ResNet-18 with torchvision's parameter names (loads a torchvision state dict)
  and METHOD's ``enc_conv1``;
* :mod:`~slopekp.models.shape` — symmetric deformation over the template + learned mean shape;
* :mod:`~slopekp.models.texture` — the UV-image generator;
* :mod:`~slopekp.models.pose` — the ``PoseHead`` interface and its four implementations by name
  (``quaternion``, ``gramschmidt``, ``svd``, ``keypoints``);
* :mod:`~slopekp.models.keypoints` — heatmap decoder, soft-argmax, keypoint visibility and heatmap targets, PnP
  settings of the keypoint head;
* :mod:`~slopekp.models.reconstructor` — the composite ``ReconstructionNet`` and ``build_model``.
"""
