"""The agfprune command line: a thin Typer layer over agfprune.core."""
