"""Entry point of ``serl classifier`` (serl/cli/main.py dispatches here); the commands live in serl.cli.classifier."""

from serl.cli.classifier import main

__all__ = ["main"]
