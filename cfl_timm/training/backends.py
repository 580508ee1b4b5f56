"""The CUDA back-end settings timm's own ``train.py`` and ``validate.py`` make before they build anything.

timm 1.0.31's scripts switch on TensorFloat-32 matrix products and cuDNN's convolution autotuning whenever CUDA is
available. Leaving them off made this project's scripts slower than timm's on the same flags (a GPU check on an
H200 found it; inductor warned that TF32 tensor cores were left unused), so the drop-in makes the same settings,
at the same point.
"""
import torch

__all__ = ['set_timm_cuda_defaults']


def set_timm_cuda_defaults() -> bool:
    """As timm's scripts do: TF32 for float32 matrix products and cuDNN autotuning, when CUDA is available.

    TF32 rounds the inputs of float32 matrix products to a 10-bit mantissa on tensor cores; autotuning picks each
    convolution's fastest algorithm for its shape on first use. Neither changes a float64 computation or anything
    on the CPU.

    Returns:
        Whether CUDA was available (and the settings were made).
    """
    if not torch.cuda.is_available():
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    return True
