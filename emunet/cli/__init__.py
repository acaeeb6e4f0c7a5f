"""Command-line interface of emunet (each sub-command in its own module)."""
