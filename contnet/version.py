"""The version of contnet."""

__version__ = "0.1.0"
