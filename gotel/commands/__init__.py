"""One module per `gotel` subcommand (see gotel.cli.COMMANDS)."""
