"""robopol: demonstrations to deployed controllers with generative action-chunk policies."""

__version__ = "0.1.0"
