"""covidx's version (a leaf: the file writers record it)."""
__version__ = "0.1.0"
