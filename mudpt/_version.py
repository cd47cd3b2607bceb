"""The package's version, in its own module so that any layer can read it without importing
the facade (``import mudpt`` loads the whole core API)."""

__version__ = "0.2.0"
