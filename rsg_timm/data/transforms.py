"""Transforms: the CIFAR recipe applied to whole uint8 batches on any device, and the per-image (PIL) transforms for
a regular DataLoader.

The CIFAR train recipe (LDAM-DRW / RSG) is: 4-pixel zero padding + random 32x32 crop, horizontal flip with p = 0.5,
then normalisation. Done per image in PIL it dominates a 2-core CPU run of a ResNet-32, so for in-memory 32 px data
the crop is one gather with per-sample offsets and the whole epoch never leaves tensors.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform

from ..constants import CIFAR100_MEAN, CIFAR100_STD, CIFAR10_MEAN, CIFAR10_STD

__all__ = [
    'CifarBatchTransform', 'to_nchw', 'default_mean_std', 'build_transform',
    'IN_MEMORY_DATASETS',
]

# Datasets held as uint8 arrays (ArrayLTDataset.data), eligible for CifarBatchTransform + TensorBatchLoader.
IN_MEMORY_DATASETS = ('cifar10_lt', 'cifar100_lt', 'demo')
# Datasets whose train recipe adds ColorJitter(0.4) (Decoupling's ImageNet-LT / iNaturalist recipes).
_COLOR_JITTER_DATASETS = ('imagenet_lt', 'inat2018')


def to_nchw(images: Union[torch.Tensor, np.ndarray]) -> torch.Tensor:
    """A uint8 image batch as an NCHW tensor; NHWC ([N, H, W, 1|3]) input is permuted, NCHW passes through."""
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise ValueError(f'Expected an image batch [N, C, H, W] or [N, H, W, C], got shape {tuple(images.shape)}.')
    if images.shape[1] in (1, 3):
        return images
    if images.shape[-1] in (1, 3):
        return images.permute(0, 3, 1, 2)
    raise ValueError(f'Cannot tell the channel axis of shape {tuple(images.shape)}; expected 1 or 3 channels.')


class CifarBatchTransform:
    """The CIFAR train (pad + random crop + flip + normalise) or eval (normalise) transform on a uint8 batch.

    Random draws, in this order and from ``generator`` (CPU generators work for batches on any device): offsets
    ``torch.randint(0, 2 * padding + 1, (N, 2))`` giving (top, left) in the padded image, then
    ``torch.rand(N) < hflip`` choosing the images to mirror. The crop and the flip are one advanced-indexing gather.

    Args:
        mean: per-channel mean in [0, 1] units.
        std: per-channel std in [0, 1] units.
        is_training: apply the random crop and flip; otherwise only normalise.
        padding: zero padding on each side before the crop.
        hflip: probability of a horizontal flip.
    """

    def __init__(
            self,
            mean: Sequence[float] = CIFAR10_MEAN,
            std: Sequence[float] = CIFAR10_STD,
            is_training: bool = True,
            padding: int = 4,
            hflip: float = 0.5,
    ):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.is_training = is_training
        self.padding = padding
        self.hflip = hflip

    def __call__(
            self,
            images: Union[torch.Tensor, np.ndarray],
            generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """uint8 [N, C, H, W] or [N, H, W, C] -> float32 [N, C, H, W], augmented (train) and normalised."""
        x = to_nchw(images)
        if self.is_training:
            x = self._crop_flip(x, generator)
        return self._normalize(x)

    def _crop_flip(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        gen_device = generator.device if generator is not None else torch.device('cpu')
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator, device=gen_device).to(x.device)
        flip = (torch.rand(n, generator=generator, device=gen_device) < self.hflip).to(x.device)
        padded = F.pad(x, (p, p, p, p))  # [N, C, H + 2p, W + 2p], zeros = black border as in RandomCrop(padding=p)
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # [N, H]
        cols = offsets[:, 1:] + torch.arange(w, device=x.device)  # [N, W]
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # mirrored crop = crop columns read right to left
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]  # [N, C, H, W]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std as one multiply-add per element.
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        return torch.addcmul(-mean / std, x.float(), 1.0 / (255.0 * std))


def default_mean_std(dataset_name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The normalisation statistics a dataset is usually trained with (CIFAR's own, else ImageNet's)."""
    if dataset_name == 'cifar100_lt':
        return CIFAR100_MEAN, CIFAR100_STD
    if dataset_name in IN_MEMORY_DATASETS:
        return CIFAR10_MEAN, CIFAR10_STD
    return IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def build_transform(dataset_name: str, is_training: bool, data_config: Optional[Dict] = None) -> Callable:
    """Per-image transform of a file-based dataset for a torch DataLoader: timm's ``create_transform``
    (RandomResizedCrop + flip, plus ColorJitter(0.4) for ImageNet-LT and iNaturalist, for training; resize + centre
    crop for eval). The in-memory datasets (``IN_MEMORY_DATASETS``) are augmented as whole batches by
    :class:`CifarBatchTransform` instead.

    Args:
        dataset_name: a ``list_lt_datasets()`` name.
        is_training: train or eval transform.
        data_config: timm's ``resolve_data_config`` output; its ``mean``/``std`` override the dataset's defaults and
            its ``input_size``, ``interpolation``, ``crop_pct`` and ``crop_mode`` drive the ImageNet-style transform.
    """
    if dataset_name in IN_MEMORY_DATASETS:
        raise ValueError(f'{dataset_name} is held in memory and augmented per batch: use CifarBatchTransform '
                         f'(create_lt_loader does), not a per-image transform')
    data_config = data_config or {}
    default_mean, default_std = default_mean_std(dataset_name)
    mean = tuple(data_config.get('mean', default_mean))
    std = tuple(data_config.get('std', default_std))
    return create_transform(
        input_size=data_config.get('input_size', (3, 224, 224)),
        is_training=is_training,
        color_jitter=0.4 if dataset_name in _COLOR_JITTER_DATASETS else None,
        interpolation=data_config.get('interpolation', 'bilinear'),
        mean=mean,
        std=std,
        crop_pct=data_config.get('crop_pct'),
        crop_mode=data_config.get('crop_mode'),
    )
