"""torchrun for ``distributed_train.sh``, with a log folder that is removed when the launch ends.

torchrun's elastic agent keeps its per-rank log and error files in a ``torchelastic_*`` folder that it makes in the
system temp folder and never removes: one more folder per launch. :func:`main` gives the agent a temporary folder of
this launch instead (torchrun's ``--log-dir``), removed however the launch ends: training done, a rank failed,
Ctrl-C or SIGTERM (the agent turns both signals into exceptions, so the ``with`` block's cleanup runs). Those two
endings are also reported as one line each (the signal; torchrun's table of the failed ranks) instead of the agent's
traceback, with the shell's exit status (130 for Ctrl-C, 143 for SIGTERM, the first failed rank's status).

Only torch and the standard library are imported, so ``distributed_train.sh`` runs this file by its path and it works
whether or not the package is installed (as ``train.py`` does).
"""
import sys
import tempfile
from collections.abc import Sequence
from typing import Optional

__all__ = ['main']


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run torchrun with ``argv`` (its own command line: launcher flags, then the script and its arguments).

    Args:
        argv: torchrun's arguments (default ``sys.argv[1:]``), without ``--log-dir``: the launcher sets it.

    Returns:
        The exit status: 0, the first failed rank's status (128 + N for a rank killed by signal N), or 128 + the
        signal's number when the launch itself was stopped.
    """
    # torch's import is the launch's cost, not the module's.
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with tempfile.TemporaryDirectory(prefix='cfl-timm-torchrun-', ignore_cleanup_errors=True) as log_dir:
            torchrun_main(['--log-dir', log_dir, *argv])
    except SignalException as e:
        print(f'torchrun: stopped by {e.sigval.name}; every rank was stopped with it', file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        print(e, file=sys.stderr)  # the agent's table of the failed ranks, without the agent's own traceback
        code = e.get_first_failure()[1].exitcode  # the first failed rank's status; negative: killed by a signal
        return 128 - code if code < 0 else code or 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
