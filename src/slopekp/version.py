"""slopekp's version, in a module of its own so that any layer can name it without importing the package's face
(``slopekp/__init__.py``, which hands on the high-level API)."""

__version__ = "0.1.0"
