"""One way to get batches from any long-tailed dataset, for training and evaluation alike.

In-memory datasets (CIFAR-LT, the demo) are batched and augmented as whole tensors on the device
(``TensorBatchLoader``); file-based ones go through a regular ``DataLoader`` with per-image transforms. Both
expose ``__len__`` and ``set_epoch`` so the engine treats them the same.
"""
from typing import Dict, Iterable, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from .cifar_lt import ArrayLTDataset
from .samplers import LTSampler
from .transforms import CifarBatchTransform, TensorBatchLoader, build_transform, default_mean_std

__all__ = ['create_lt_loader', 'ShardSampler']


class ShardSampler:
    """Rank ``rank``'s share ``rank, rank + R, ...`` of a dataset, unpadded: for evaluation across ranks."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0):
        self.indices = range(rank, length, num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _EpochDataLoader(DataLoader):
    """A ``DataLoader`` whose ``set_epoch`` reaches its sampler, like ``TensorBatchLoader``'s."""

    def set_epoch(self, epoch: int) -> None:
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
        num_workers: worker processes of the file-based loader.
        channels_last: in-memory batches in ``channels_last`` format.
        seed: base seed of the in-memory augmentation.
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
    return _EpochDataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
                            drop_last=drop_last, pin_memory=torch.device(device).type == 'cuda',
                            persistent_workers=num_workers > 0)
