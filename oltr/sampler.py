"""Class-aware sampling of OLTR stage 2: classes drawn in turn, a few images of each.

Paper: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
https://arxiv.org/abs/1904.05160; class-aware sampling: L. Shen et al., "Relay Backpropagation for Effective
Learning of Deep Convolutional Neural Networks", ECCV 2016.
"""
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ['ClassAwareSampler']


class _Cycle:
    """Endless walk over ``items``, reshuffled at the start of every pass."""

    def __init__(self, items: Sequence[int], generator: torch.Generator):
        self.items = list(items)
        self.generator = generator
        self.order: list[int] = []

    def take(self, count: int) -> list[int]:
        taken = []
        for _ in range(count):
            if not self.order:
                self.order = [self.items[i] for i in torch.randperm(len(self.items), generator=self.generator)]
            taken.append(self.order.pop())
        return taken


class ClassAwareSampler(Sampler[int]):
    """Indices in groups of ``samples_per_class`` of one class; the classes come in turn from a cycle reshuffled
    after every pass over all classes, and each class's images from their own reshuffled cycle (a class with
    fewer images than a group repeats some).

    One epoch is ``num_samples`` indices (default: the dataset size, so an epoch has as many steps as under plain
    sampling, as in OLTR). Every epoch draws from fresh cycles seeded by ``(seed, epoch)``
    (:meth:`set_epoch`), so a resumed run sees the same images as an uninterrupted one. With a batch size that is
    a multiple of ``samples_per_class`` every batch holds whole groups.

    Args:
        labels: Class label of each dataset index.
        samples_per_class: Images per class group (OLTR: 4).
        num_samples: Indices per epoch.
        seed: Seed of the epoch's random generator.
    """

    def __init__(self, labels: Sequence[int], samples_per_class: int = 4, num_samples: int | None = None,
                 seed: int = 0):
        if samples_per_class < 1:
            raise ValueError(f'samples_per_class must be >= 1, got {samples_per_class}.')
        if not labels:
            raise ValueError('ClassAwareSampler needs at least one labelled sample.')
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(int(label), []).append(index)
        self.by_class = [by_class[label] for label in sorted(by_class)]
        self.samples_per_class = samples_per_class
        self.num_samples = len(labels) if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose indices :meth:`__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        classes = _Cycle(range(len(self.by_class)), generator)
        members = [_Cycle(indices, generator) for indices in self.by_class]
        produced = 0
        while produced < self.num_samples:
            group = members[classes.take(1)[0]].take(self.samples_per_class)
            group = group[:self.num_samples - produced]
            produced += len(group)
            yield from group
