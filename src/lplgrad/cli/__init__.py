"""The command line. Only this package prints: ``main`` (run, demo, embed, report, listings) and
``project`` (the labeling project's subcommands)."""

from lplgrad.cli.main import main

__all__ = ["main"]
