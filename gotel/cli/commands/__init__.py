"""One module per `gotel` subcommand (see gotel.cli.main.COMMANDS)."""
