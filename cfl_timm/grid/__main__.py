"""``python -m cfl_timm.grid``: the same as the ``cfl-grid`` command."""
import sys

from .cli import cli

if __name__ == '__main__':
    sys.exit(cli())
