"""The package version, here so that core modules (file headers, records) need not import the package
root (`agfprune/__init__.py`), which sits above core."""

__version__ = "0.1.0"
