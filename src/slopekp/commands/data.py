"""``slopekp data ...``: dataset generation, inspection and downloads.

Image datasets (SynthBirds images, contact sheets) register from :mod:`slopekp.commands.data_images`; videos,
downloads and verification from :mod:`slopekp.commands.data_video`.
"""

from __future__ import annotations

from slopekp.commands import add_group


def register(sub) -> None:
    g = add_group(sub, "data", "generate, inspect, download and verify datasets")
    from slopekp.commands import data_images, data_video

    data_images.register(g)
    data_video.register(g)
