"""``--initial-checkpoint``: weights loaded into a freshly built model, with a clear error for a file that is not a
checkpoint or whose tensors do not fit the model (timm's ``load_checkpoint`` would end in a raw traceback)."""
from pathlib import Path

import torch
from timm.models import load_state_dict

__all__ = ['load_initial_checkpoint']


def _first(names: list[str], count: int = 4) -> str:
    return ', '.join(names[:count]) + (f' and {len(names) - count} more' if len(names) > count else '')


def load_initial_checkpoint(model: torch.nn.Module, path: str | Path, flag: str = '--initial-checkpoint') -> None:
    """Load the weights of ``path`` into ``model`` (strictly: every key, every shape), as timm's train.py does.

    Raises:
        ValueError: Naming ``flag`` and the file: not a readable PyTorch checkpoint, or tensors that are missing,
            unexpected or of another shape than the model's (the first few named).
    """
    try:
        state_dict = load_state_dict(str(path))
    except Exception as e:  # noqa: BLE001  (truncated zip, a pickle of foreign objects, not a torch file at all)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f'{flag}: {path} is not a readable PyTorch checkpoint: {reason[:200]}') from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f'{flag}: {path} holds no state dict of tensors.')
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}' for k in own
             if k in state_dict and state_dict[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f'missing {_first(missing)}' if missing else '', f'unexpected {_first(unexpected)}' if unexpected
                 else '', f'other shapes (file vs model): {_first(wrong)}' if wrong else '']
        raise ValueError(f'{flag}: {path} does not fit the model ({"; ".join(p for p in parts if p)}); was it saved '
                         'from another --model, --num-classes or --in-chans?')
    model.load_state_dict(state_dict)
