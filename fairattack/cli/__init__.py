"""The `fairattack` command (`python -m fairattack`, the console script): `main` parses the
arguments and runs one command module (demo, run, report, compare, models, export)."""

from ._common import UsageError
from .main import main, parser

__all__ = ["UsageError", "main", "parser"]
