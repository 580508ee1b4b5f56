"""Run train.py in this process and SIGKILL it at a chosen call of a named function: deterministic kill points
for the crash tests (an event in the run, never a time).

    python tests/kill_at.py MODULE:ATTR[.ATTR...] N -- TRAIN_ARGS...

The N-th call (1-based) of the function kills the process with SIGKILL just before the call runs; N = 0 never
kills (the same run, for reference). Example: ``torch.optim:SGD.step 15`` kills before the 15th optimizer update.
"""
import importlib
import os
import signal
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def install_kill(target: str, count: int) -> None:
    """Wrap ``module:attr.path`` so that its ``count``-th call SIGKILLs this process."""
    module_name, attr_path = target.split(':')
    owner = importlib.import_module(module_name)
    *parents, name = attr_path.split('.')
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def main(argv: list[str]) -> None:
    split = argv.index('--')
    target, count = argv[0], int(argv[1])
    sys.path.insert(0, str(REPO_ROOT))
    import train
    install_kill(target, count)
    train.main(train.parse_args(argv[split + 1:]))


if __name__ == '__main__':
    main(sys.argv[1:])
