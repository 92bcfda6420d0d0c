"""dsim: distributed radio resource management simulator."""

__version__ = "0.1.0"
