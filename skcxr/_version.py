"""The package version (here so that modules below ``skcxr/__init__.py`` can read it)."""

__version__ = "0.1.0.dev0"
