"""gepalib: a readable reproduction of the 11-layer GEPA Parameter Golf submission."""

__version__ = "0.1.0"
