"""One module per command; each imports only typer and the standard library at top level."""
