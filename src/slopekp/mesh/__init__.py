"""Meshes: the template (:class:`Template`, :func:`load_template`), built-in meshes (:func:`icosphere`,
:func:`procedural_bird`), mirror symmetry, topology helpers, regularisers and export.

Object frame: symmetric about x = 0, +x bird-left, beak −y, tail +y, back +z; faces counter-clockwise seen
from outside (``docs/conventions.md``).
"""

from slopekp.mesh.io import EXPORT_FORMATS, MeshData, export_mesh, load_mesh, uv_to_texcoords
from slopekp.mesh.load import TEMPLATE_NAMES, load_template
from slopekp.mesh.procedural import icosphere, procedural_bird
from slopekp.mesh.regularizers import (
    cotangent_laplacian,
    cotangent_laplacian_loss,
    cotangent_weights,
    deform_loss,
    edge_length_loss,
    graph_laplacian_loss,
    uniform_laplacian,
)
from slopekp.mesh.symmetry import Symmetry, find_symmetry, mirror_permutation
from slopekp.mesh.template import Template, direction_uv, farthest_point_sampling, sphere_uv, template_fingerprint
from slopekp.mesh.topology import (
    adjacent_faces,
    check_faces,
    edges,
    euler_characteristic,
    face_normals,
    is_closed,
    orient_outward,
    signed_volume,
    vertex_neighbors,
    vertex_normals,
)

__all__ = [
    "EXPORT_FORMATS",
    "TEMPLATE_NAMES",
    "MeshData",
    "Symmetry",
    "Template",
    "adjacent_faces",
    "check_faces",
    "cotangent_laplacian",
    "cotangent_laplacian_loss",
    "cotangent_weights",
    "deform_loss",
    "direction_uv",
    "edge_length_loss",
    "edges",
    "euler_characteristic",
    "export_mesh",
    "face_normals",
    "farthest_point_sampling",
    "find_symmetry",
    "graph_laplacian_loss",
    "icosphere",
    "is_closed",
    "load_mesh",
    "load_template",
    "mirror_permutation",
    "orient_outward",
    "procedural_bird",
    "signed_volume",
    "sphere_uv",
    "template_fingerprint",
    "uniform_laplacian",
    "uv_to_texcoords",
    "vertex_neighbors",
    "vertex_normals",
]
