"""The ``automc`` command line (Typer + Rich): thin wrappers over the library functions."""
