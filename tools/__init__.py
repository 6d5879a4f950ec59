"""Tools for the engineers: benchmarks. Not part of the product."""
