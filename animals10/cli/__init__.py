"""The `animals10` command line: `main` dispatches to one module per command."""
