"""stagingmerge merge engine: fold a staging Delta table into a main Delta table exactly once."""

__version__ = "0.1.0"
