"""The composition root: the ``jisr`` command and the demo network."""

__version__ = "0.1.0"
