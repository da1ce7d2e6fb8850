"""One way to get batches from any long-tailed dataset, for training and evaluation alike.

In-memory datasets (CIFAR-LT, the demo) are batched and augmented as whole tensors on the device
(``TensorBatchLoader``); file-based ones go through a regular ``DataLoader`` with per-image transforms. Both
expose ``__len__`` and ``set_epoch`` so the engine treats them the same, and both draw an epoch's augmentations from
the run's seed and the epoch alone, so a resumed run sees the batches the uninterrupted run saw.
"""
import functools
import logging
import math
import os
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .cifar_lt import ArrayLTDataset
from .samplers import LTSampler, ShardSampler
from .transforms import CifarBatchTransform, build_transform, default_mean_std, to_nchw

__all__ = ['create_lt_loader', 'TensorBatchLoader', 'available_workers']

_logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)  # one note per run, not one per loader
def available_workers(requested: int) -> int:
    """``requested`` loader workers, at most one per CPU core this process may use: more only contend (torch warns),
    and a config sized for a large machine should still run as it is on a small one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    if requested > cores:
        _logger.info(f'--workers {requested}: this machine gives the process {cores} CPU cores; using {cores} workers')
        return cores
    return requested


class TensorBatchLoader:
    """Batches from an in-memory uint8 image tensor, augmented on ``device``, without worker processes.

    The images go to the device once; each batch is an index gather plus ``augment``. Augmentation draws come from
    a generator reseeded with ``seed + epoch`` in ``set_epoch`` (which also reaches the sampler), so a resumed run
    sees the same batches.

    Args:
        images: uint8 [N, H, W, C] or [N, C, H, W].
        labels: [N] class indices.
        batch_size: images per batch.
        sampler: iterable of dataset indices with ``len`` (an ``LTSampler``); sequential order when ``None``.
        augment: callable (uint8 batch [B, C, H, W], generator) -> float batch; ``x / 255`` when ``None``.
        device: where batches are built and returned.
        drop_last: drop the final short batch.
        channels_last: return batches in ``torch.channels_last`` memory format.
        seed: base seed of the augmentation generator.
    """

    def __init__(
            self,
            images: Union[torch.Tensor, np.ndarray],
            labels: Union[Sequence[int], np.ndarray, torch.Tensor],
            batch_size: int,
            sampler: Optional[Iterable[int]] = None,
            augment: Optional[Callable[..., torch.Tensor]] = None,
            device: Union[str, torch.device] = 'cpu',
            drop_last: bool = False,
            channels_last: bool = False,
            seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
        self.device = torch.device(device)
        self.images = to_nchw(images).contiguous().to(self.device)
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(self.device)
        if len(self.images) != len(self.labels):
            raise ValueError(f'{len(self.images)} images but {len(self.labels)} labels.')
        self.batch_size = batch_size
        self.sampler = sampler
        self.augment = augment
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reseeds the augmentation and forwards to the sampler when it is epoch-aware."""
        self.epoch = int(epoch)
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def _num_indices(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.labels)

    def __len__(self) -> int:
        n = self._num_indices()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is not None:
            order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        else:
            order = torch.arange(len(self.labels))
        order = order.to(self.device)
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx]
            x = self.augment(x, generator) if self.augment is not None else x.float().div_(255.0)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


class _EpochDataLoader(DataLoader):
    """A ``DataLoader`` whose ``set_epoch`` reaches its sampler, like ``TensorBatchLoader``'s, and reseeds its workers.

    torch seeds each worker's ``torch``, ``random`` and numpy from one base seed drawn when the epoch's workers
    start; the draw comes from this loader's generator, seeded from ``(seed, epoch, rank)``, and not from the global
    generator, whose state at a resumed epoch's start would differ. Training workers therefore start afresh each
    epoch (persistent workers would keep the first epoch's seeds).
    """

    def __init__(self, dataset: Dataset, *, seed: int, rank: int, **kwargs):
        super().__init__(dataset, generator=torch.Generator(), **kwargs)
        self.seed, self.rank = seed, rank
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        entropy = np.random.SeedSequence([self.seed, int(epoch), self.rank]).generate_state(1, np.uint64)[0]
        self.generator.manual_seed(int(entropy))
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)


def create_lt_loader(
        dataset: Dataset,
        *,
        dataset_name: str,
        batch_size: int,
        is_training: bool,
        data_config: Optional[Dict] = None,
        sampler: Optional[Union[LTSampler, ShardSampler]] = None,
        device: Union[str, torch.device] = 'cpu',
        num_workers: int = 0,
        channels_last: bool = False,
        seed: int = 0,
        rank: int = 0,
) -> Iterable:
    """Batches ``(images float [B, C, H, W], labels [B])`` of ``dataset``.

    Training drops the last short batch (as the RSG code does) unless that would leave no batch at all.

    Args:
        dataset: a dataset from ``create_lt_dataset``.
        dataset_name: its registry name (selects the transform recipe).
        batch_size: images per batch on this rank.
        is_training: augment (and drop the last short batch).
        data_config: timm's resolved data config (mean/std, input size for the file-based recipe).
        sampler: index sampler; sequential order when ``None``.
        device: where in-memory batches are built; file-based batches stay on the CPU for the engine to move.
        num_workers: worker processes of the file-based loader, at most one per available CPU core.
        channels_last: in-memory batches in ``channels_last`` format.
        seed: base seed of the augmentation: of the in-memory batches, or of the file-based loader's workers.
        rank: this process's rank in distributed training, so that each rank's workers draw their own
            augmentations.
    """
    num_items = len(sampler) if sampler is not None else len(dataset)
    drop_last = is_training and num_items >= batch_size
    if isinstance(dataset, ArrayLTDataset):
        default_mean, default_std = default_mean_std(dataset_name)
        data_config = data_config or {}
        augment = CifarBatchTransform(data_config.get('mean', default_mean), data_config.get('std', default_std),
                                      is_training=is_training)
        return TensorBatchLoader(dataset.data, dataset.targets, batch_size, sampler=sampler, augment=augment,
                                 device=device, drop_last=drop_last, channels_last=channels_last, seed=seed)
    dataset.transform = build_transform(dataset_name, is_training, data_config)
    num_workers = available_workers(num_workers)
    return _EpochDataLoader(dataset, seed=seed, rank=rank, batch_size=batch_size, sampler=sampler, shuffle=False,
                            num_workers=num_workers, drop_last=drop_last,
                            pin_memory=torch.device(device).type == 'cuda',
                            persistent_workers=num_workers > 0 and not is_training)
