"""The package version, in a leaf module: the writer of model files records it."""

__version__ = "0.1.0"
