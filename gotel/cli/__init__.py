"""The `gotel` command line: subcommands, the trace viewer and flame graphs (main.py is the entry point)."""
