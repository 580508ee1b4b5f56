"""The one way this project's command-line tools run: parse, check, run, and end in one line.

``cfl-grid``, ``python -m cfl_timm.evaluate`` and ``python -m cfl_timm.shift`` run through :func:`run_cli`: a
``ValueError`` from the checks becomes argparse's one-line usage error (exit status 2), SIGTERM a clean exit (exit
status 143, :func:`cfl_timm.training.termination.exit_on_sigterm`) and Ctrl-C one line (exit status 130), never a
traceback. Kept apart from :mod:`cfl_timm.training.arg_types`, which is copied into timm checkouts on its own.
"""
import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

from .termination import exit_on_sigterm

__all__ = ['run_cli']


def run_cli(parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any],
            argv: Optional[Sequence[str]] = None) -> Any:
    """Parse ``argv`` and return ``main(args)``; a ``ValueError`` from the checks becomes argparse's one-line usage
    error (``<prog>: error: ...``, exit status 2) instead of a traceback; SIGTERM a one-line clean exit (exit status
    143, :func:`cfl_timm.training.termination.exit_on_sigterm`); Ctrl-C one line and exit status 130."""
    args = parser.parse_args(argv)
    try:
        with exit_on_sigterm(parser.prog):
            return main(args)
    except ValueError as error:
        parser.error(' '.join(str(error).split()))
    except KeyboardInterrupt:  # every file these tools write is written atomically: nothing half-written is left
        print(f'{parser.prog}: interrupted (Ctrl-C)', file=sys.stderr)
        sys.exit(130)
