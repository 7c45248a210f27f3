"""SynthBirds: procedurally generated bird images (and videos) for training and testing without real data.

Per instance: the procedural template with a random *symmetric*, smooth, bounded shape deformation; a random UV
texture (back/belly colour fields, head cap, wings with bars, tail, beak, eyes; plain, striped, patched or
spotted); random Lambertian lighting; a cluttered background (gradient, blurred blobs, branches, noise);
sometimes an occluder in front and a truncated view; and a camera whose rotation is drawn from the viewpoint
distribution fitted to the real CUB SfM rotations (:mod:`slopekp.data.viewpoints`). Other *looks* (background,
lighting and plumage kinds, :mod:`slopekp.data.synth.style`) render the same birds differently, e.g. a held-out
test set.

Modules, one concern each (this package re-exports nothing; import from them):

* :mod:`~slopekp.data.synth.style` — the looks: the kinds of each axis and :data:`~slopekp.data.synth.style.HELD_OUT`.
* :mod:`~slopekp.data.synth.options` — :class:`SynthOptions`, the image generator's settings (the ``synth`` config
  section plus the seed and generator-only options).
* :mod:`~slopekp.data.synth.bird` — the random symmetric deformation, the 15 CUB keypoint vertices,
  :func:`sample_bird`.
* :mod:`~slopekp.data.synth.texture` — the random plumage as a UV image; :mod:`~slopekp.data.synth.colour` — HSV
  colours.
* :mod:`~slopekp.data.synth.background` — the cluttered background and the occluder.
* :mod:`~slopekp.data.synth.scene` — lighting, camera placement, the hard render, compositing, keypoint visibility.
* :mod:`~slopekp.data.synth.writer` — :func:`generate_synthbirds`: CMR-format files and the worker pool.
* :mod:`~slopekp.data.synth.video` — moving birds over a background (:func:`synthesize_video`);
  :mod:`~slopekp.data.synth.video_writer` — :func:`generate_synth_videos`: the DAVIS 2017 / YouTube-VOS layouts.
"""
