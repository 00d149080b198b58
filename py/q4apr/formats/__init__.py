"""One module per file format: each reads into a Model, the output formats also write."""
