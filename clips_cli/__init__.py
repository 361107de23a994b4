"""The ``clips`` console command: one parser, each package contributes its subcommands."""
