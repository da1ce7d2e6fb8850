"""Long-tail samplers (Decoupling's instance / class-balanced / square-root / progressive), epoch-aware and DDP-safe.

Class j is drawn with probability p_j = n_j^q / sum_i n_i^q (q = 1 instance-balanced, 0 class-balanced, 1/2
square-root) and progressive sampling moves linearly from instance- to class-balanced, p(t) = (1 - t/T) p_IB +
(t/T) p_CB (Kang et al., ICLR 2020). A draw picks a sample with probability p_{y} / n_{y}, i.e.
a class by p and then an image of it uniformly, with replacement.

Every sampler makes ONE global draw per epoch from a generator seeded with ``seed + epoch``, so all ranks compute
the same draw and a resumed run repeats it; rank r keeps positions r, r + R, r + 2R, ... of the draw, padded by
wrapping so that all ranks get the same length (as ``torch.utils.data.DistributedSampler`` does). This is the
DDP-aware class-balanced sampler torchsampler never shipped (its issue #9).
"""
import math
from typing import Callable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Sampler

from ..losses import effective_number_weights
from ..registry import Registry

__all__ = [
    'LTSampler', 'InstanceSampler', 'ClassBalancedSampler', 'SqrtSampler', 'ProgressiveSampler', 'DeferredSampler',
    'ShardSampler', 'register_sampler', 'list_samplers', 'create_sampler', 'sampler_kwargs',
]

_SAMPLERS = Registry('sampler')

Targets = Union[Sequence[int], np.ndarray, torch.Tensor]


def register_sampler(name: str) -> Callable:
    """Class decorator adding a sampler to the registry under ``name``; a duplicate name is an error."""
    return _SAMPLERS.decorator(name)


def list_samplers() -> List[str]:
    """Registered sampler names, sorted."""
    return _SAMPLERS.names()


class LTSampler(Sampler[int]):
    """Base: a fixed-size seeded global draw per epoch, split into disjoint equal rank shares.

    Args:
        targets: label of every dataset item.
        num_samples: global draws per epoch; the dataset length by default.
        num_replicas: number of DDP ranks.
        rank: this rank.
        seed: base seed; epoch e draws with ``seed + e``, identically on every rank.
        total_epochs: length of the run, for samplers whose distribution follows the schedule.
    """

    def __init__(
            self,
            targets: Targets,
            num_samples: Optional[int] = None,
            num_replicas: int = 1,
            rank: int = 0,
            seed: int = 0,
            total_epochs: Optional[int] = None,
    ):
        super().__init__()
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).flatten()
        if self.targets.numel() == 0:
            raise ValueError('Cannot sample from an empty dataset.')
        if self.targets.min() < 0:
            raise ValueError(f'Labels must be >= 0, got {int(self.targets.min())}.')
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f'Need num_replicas >= 1 and 0 <= rank < num_replicas, got rank={rank}, '
                             f'num_replicas={num_replicas}.')
        self.class_counts = torch.bincount(self.targets)
        self.num_samples = int(num_samples) if num_samples is not None else len(self.targets)
        if self.num_samples < 1:
            raise ValueError(f'num_samples must be >= 1, got {self.num_samples}.')
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.total_epochs = total_epochs
        self.epoch = 0
        self.samples_per_rank = math.ceil(self.num_samples / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` yields (call before each epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def global_draw(self) -> torch.Tensor:
        """The whole epoch's draw shared by all ranks, [num_samples] int64 dataset indices."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return self._draw(g)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        draw = self.global_draw()
        total = self.samples_per_rank * self.num_replicas
        if total > len(draw):
            draw = torch.cat([draw, draw.repeat(math.ceil(total / len(draw)))[:total - len(draw)]])
        return iter(draw[self.rank:total:self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.samples_per_rank


@register_sampler('instance')
class InstanceSampler(LTSampler):
    """Instance-balanced (q = 1): a plain seeded permutation, every image once per epoch (more when num_samples
    exceeds the dataset, concatenating fresh permutations)."""

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        return _permutations(len(self.targets), self.num_samples, generator)


def _permutations(n: int, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """``num_samples`` indices of ``range(n)``: fresh permutations concatenated, each image once per ``n`` draws."""
    perms = [torch.randperm(n, generator=generator) for _ in range(math.ceil(num_samples / n))]
    return torch.cat(perms)[:num_samples]


class _ClassPowerSampler(LTSampler):
    """Draws with replacement, class j with probability proportional to n_j^q."""
    q: float = 1.0

    def class_probs(self) -> torch.Tensor:
        """p_j for the current epoch, [num_classes] float64 (classes without images get 0)."""
        return _power_probs(self.class_counts, self.q)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        # Per-sample weight p_y / n_y: pick a class by p, then one of its images uniformly.
        p = self.class_probs()
        weights = (p / self.class_counts.clamp(min=1).double())[self.targets]
        return torch.multinomial(weights, self.num_samples, replacement=True, generator=generator)


def _power_probs(counts: torch.Tensor, q: float) -> torch.Tensor:
    counts = counts.double()
    mass = torch.where(counts > 0, counts.pow(q), torch.zeros_like(counts))
    return mass / mass.sum()


@register_sampler('class_balanced')
class ClassBalancedSampler(_ClassPowerSampler):
    """Class-balanced (q = 0): every class equally likely, whatever its size."""
    q = 0.0


@register_sampler('sqrt')
class SqrtSampler(_ClassPowerSampler):
    """Square-root (q = 1/2): class probability proportional to sqrt(n_j)."""
    q = 0.5


@register_sampler('progressive')
class ProgressiveSampler(_ClassPowerSampler):
    """Progressively balanced: p(t) = (1 - t/T) p_IB + (t/T) p_CB with t the epoch and T ``total_epochs``.

    ``total_epochs`` (T) is required; from epoch T on the draw is fully class-balanced.
    """

    def __init__(self, targets: Targets, **kwargs):
        super().__init__(targets, **kwargs)
        if self.total_epochs is None or self.total_epochs < 1:
            raise ValueError(
                f'The progressive sampler needs total_epochs >= 1 (pass --epochs), got {self.total_epochs}.')

    def class_probs(self) -> torch.Tensor:
        t = min(self.epoch / self.total_epochs, 1.0)
        return (1.0 - t) * _power_probs(self.class_counts, 1.0) + t * _power_probs(self.class_counts, 0.0)


@register_sampler('deferred')
class DeferredSampler(_ClassPowerSampler):
    """Deferred re-sampling (DRS): instance-balanced before ``switch_epoch``, re-balanced from it on.

    After the switch each image is drawn with its class's effective-number weight (1 - beta) / (1 - beta^n_y), as
    the official RSG large-scale scripts do (Cui et al.'s weights; with beta = 0.9999 and a few hundred images per
    class this is close to class-balanced).

    Before the switch, images are drawn instance-balanced with replacement (about 63 % of them seen per epoch), or,
    with ``shuffle_before_switch``, visited once each in a seeded shuffle, as the official scripts' shuffled
    DataLoader does.

    Args:
        switch_epoch: first (0-based) re-sampled epoch.
        beta: effective-number beta.
        shuffle_before_switch: a permutation per epoch before the switch instead of draws with replacement.
    """

    def __init__(self, targets: Targets, switch_epoch: int = 0, beta: float = 0.9999,
                 shuffle_before_switch: bool = False, **kwargs):
        super().__init__(targets, **kwargs)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f'beta must lie in [0, 1), got {beta}.')
        self.switch_epoch = int(switch_epoch)
        self.beta = beta
        self.shuffle_before_switch = bool(shuffle_before_switch)

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        if self.shuffle_before_switch and self.epoch < self.switch_epoch:
            return _permutations(len(self.targets), self.num_samples, generator)
        return super()._draw(generator)

    def class_probs(self) -> torch.Tensor:
        if self.epoch < self.switch_epoch:
            return _power_probs(self.class_counts, 1.0)
        counts = self.class_counts.double()
        seen = counts > 0  # a label without images keeps mass 0
        mass = torch.zeros_like(counts)
        mass[seen] = counts[seen] * effective_number_weights(counts[seen], self.beta).double()
        return mass / mass.sum()


class ShardSampler:
    """Rank ``rank``'s share ``rank, rank + R, ...`` of a dataset, unpadded: for evaluation across ranks."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def create_sampler(name: str, targets: Targets, **kwargs) -> LTSampler:
    """Build a registered sampler by name.

    Args:
        name: one of ``list_samplers()``.
        targets: label of every dataset item, or a dataset exposing ``.targets``.
        kwargs: :class:`LTSampler`'s ``num_samples``, ``num_replicas``, ``rank``, ``seed`` and ``total_epochs``,
            and the sampler's own options (``deferred``: ``switch_epoch``, ``beta``, ``shuffle_before_switch``).
    """
    return _SAMPLERS.get(name)(getattr(targets, 'targets', targets), **kwargs)


def sampler_kwargs(args) -> dict:
    """The ``create_sampler`` keyword arguments from a train.py namespace (``seed``, ``epochs``, ``world_size``,
    ``rank``, and ``drs_epoch`` / ``cb_beta`` / ``drs_shuffle`` for ``--sampler deferred``); the only function here
    that reads an argparse namespace."""
    kwargs = dict(
        num_replicas=getattr(args, 'world_size', 1) or 1,
        rank=getattr(args, 'rank', 0) or 0,
        seed=getattr(args, 'seed', 0) or 0,
        total_epochs=getattr(args, 'epochs', None),
    )
    if getattr(args, 'sampler', None) == 'deferred':
        kwargs.update(switch_epoch=args.drs_epoch, beta=args.cb_beta,
                      shuffle_before_switch=bool(getattr(args, 'drs_shuffle', False)))
    return kwargs
