"""The guard of a grid cell's command: ``python guard.py WORKER_PID -- COMMAND [ARG...]``.

Standard library only, and run as a script by its path (see :func:`cfl_timm.grid.runner.run_guarded`), so it
starts in milliseconds. It asks the kernel to SIGKILL it when the worker dies (``PR_SET_PDEATHSIG``), then
becomes the command (same pid), so a killed worker never leaves its training running.
"""
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def guard_and_exec(parent_pid: int, command: list[str]) -> None:
    """Ask for SIGKILL when the worker dies, then become ``command``.

    The parent-death signal survives ``execve`` (it is only cleared for set-user-ID binaries) and fires when the
    thread that started the guard exits, which is the worker's main thread. Checking the parent after setting it
    closes the window in which the worker could have died first.
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    except (OSError, AttributeError) as exc:
        sys.stderr.write(f'cfl-grid guard: cannot tie the command to its worker ({exc}); it may outlive it\n')
    if os.getppid() != parent_pid:
        sys.exit(f'cfl-grid guard: worker {parent_pid} died before its command started')
    os.execvp(command[0], command)


if __name__ == '__main__':
    if len(sys.argv) < 4 or sys.argv[2] != '--' or not sys.argv[1].isdigit():
        sys.exit('usage: guard.py WORKER_PID -- COMMAND [ARG...]')
    guard_and_exec(int(sys.argv[1]), sys.argv[3:])
