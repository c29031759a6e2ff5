"""Console entry points; each is a thin wrapper around a library function."""
