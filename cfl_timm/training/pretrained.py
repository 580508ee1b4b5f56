"""Pretrained weights that cannot be had: one usage error naming the flag, not the hub client's traceback.

``--pretrained`` (and a distillation teacher) makes timm fetch the weights from the Hugging Face hub, or read them
from its cache. Without network access and without a cached copy, huggingface_hub raises ``LocalEntryNotFoundError``
deep inside ``timm.create_model``; a missing or unreadable weights file raises another ``OSError``.
"""
import contextlib
from collections.abc import Iterator

__all__ = ['fetching_weights']


@contextlib.contextmanager
def fetching_weights(flag: str, model: str, file_flag: str, pretrained: bool = True) -> Iterator[None]:
    """Turn an ``OSError`` raised while ``model``'s pretrained weights are loaded into a ``ValueError`` naming
    ``flag`` and the way around it (``file_flag``: a weights file on disk, or a filled Hugging Face cache).

    Args:
        flag: The flag that asked for the weights (``--pretrained``, ``--kd-model-name``).
        model: The timm model name.
        file_flag: The flag that takes a local weights file instead.
        pretrained: Whether weights are asked for at all; without, errors pass through unchanged.
    """
    if not pretrained:
        yield
        return
    try:
        yield
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError is one
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise ValueError(f'{flag}: the pretrained weights of {model!r} could not be loaded ({reason}). Without '
                         'network access, fill the Hugging Face cache (HF_HOME) beforehand, or give the weights file '
                         f'with {file_flag} FILE.') from None
