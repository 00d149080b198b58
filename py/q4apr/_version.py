"""The one place the version is defined: pyproject.toml, the CLI, the page and APR files read it."""

__version__ = "0.1.0"
