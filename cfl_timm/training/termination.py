"""SIGTERM as a clean exit for the command-line entry points.

SIGTERM is what ``kill``, Slurm (preemption, time limit), torchrun's elastic agent (another rank failed) and the
grid runner (a cell stopped) send. Its default disposition ends the process without interpreter cleanup: no
``finally`` blocks, no ``atexit`` handlers, so the temporary folders that libraries create at import (W&B, which
``timm.utils`` imports, makes two in the system temp folder) and the run lock stay behind. :func:`exit_on_sigterm`
turns the signal into :class:`Terminated`, a ``SystemExit`` with status 143 (128 + 15, what a shell reports for a
process killed by SIGTERM), so cleanup runs as after Ctrl-C.
"""
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ['TERMINATED_STATUS', 'Terminated', 'exit_on_sigterm']

TERMINATED_STATUS = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """Raised in the main thread when the process receives SIGTERM.

    A ``SystemExit`` so that ``except Exception`` blocks let it through, ``finally`` blocks and ``atexit`` handlers
    run, and a process that raises it (a forked grid worker, the interpreter's top level) exits with status 143
    without a traceback.
    """

    def __init__(self):
        super().__init__(TERMINATED_STATUS)


def _raise_terminated(signum, frame) -> None:
    # A second SIGTERM (Slurm and torchrun may both forward one) must not cut the cleanup the first one started;
    # SIGKILL stays the escalation.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


@contextlib.contextmanager
def exit_on_sigterm(prog: str, hint: str = '') -> Iterator[None]:
    """Within the block, SIGTERM ends the process cleanly: one line ``<prog>: terminated (SIGTERM)<hint>`` on
    stderr and exit status 143.

    The handler is installed only from the main thread (Python runs signal handlers there) and only over the
    default disposition: a process started with SIGTERM ignored keeps ignoring it. The previous handler is
    restored on leaving the block.

    Args:
        prog: the program name that starts the line (``parser.prog``).
        hint: text appended to the line, e.g. how to resume (``'; resume with --resume auto'``).
    """
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except Terminated:
        print(f'{prog}: terminated (SIGTERM){hint}', file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
