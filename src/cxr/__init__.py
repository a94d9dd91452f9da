"""cxr: a reproducible chest X-ray classification pipeline on NIH ChestX-ray14."""

__version__ = "0.1.0"
