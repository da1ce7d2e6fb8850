"""CIFAR-10-LT and CIFAR-100-LT, and the in-memory dataset class they (and the demo set) share.

The long-tailed training sets follow LDAM-DRW's builder (Cao et al., NeurIPS 2019, ``imbalance_cifar.py``): an exp or step
profile over the original label order, cut either with the RSG code's ``first`` rule or LDAM-DRW's seeded
``shuffle``. The test split is the untouched balanced CIFAR test set. Two on-disk layouts are read: the npz files of
a local CIFAR copy (``cifar10_train.npz`` with ``images`` uint8 [N, 32, 32, 3], ``labels`` and optionally ``classes``)
and torchvision's ``cifar-10-batches-py`` / ``cifar-100-python`` folders. Arrays are checked when they are read, so a
bad file fails before training, naming the file.
"""
import logging
import os
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .imbalance import long_tail_counts, select_long_tail

__all__ = ['ArrayLTDataset', 'CifarLT', 'check_labelled_images', 'load_cifar_arrays', 'read_npz', 'is_train_split']

_logger = logging.getLogger(__name__)

# Images per class in the full CIFAR training sets; the n_max of every CIFAR-LT profile.
_CIFAR_TRAIN_PER_CLASS = {10: 5000, 100: 500}
_TRAIN_SPLITS = ('train', 'training')
_EVAL_SPLITS = ('test', 'val', 'valid', 'validation', 'eval')


def is_train_split(split: str, name: str) -> bool:
    """True for a training split name, False for an evaluation one; anything else is a clear error."""
    if split in _TRAIN_SPLITS:
        return True
    if split in _EVAL_SPLITS:
        return False
    raise ValueError(f'Unknown split {split!r} for {name}; use one of {list(_TRAIN_SPLITS + _EVAL_SPLITS)}.')


def read_npz(path: str, required: Sequence[str]) -> Dict[str, np.ndarray]:
    """All arrays of an npz file; a missing one is an error naming the file and the arrays it has."""
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile)  # what numpy and zipfile raise for a bad file
    try:
        f = np.load(path, allow_pickle=False)  # numpy calls anything not zip or .npy "pickled data"
    except FileNotFoundError:
        raise
    except unreadable as e:
        raise ValueError(f'{path}: not an npz file (a zip of .npy arrays): it is truncated or of another format '
                         f'({type(e).__name__}); replace it with a complete copy.') from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f'{path}: holds a single array (.npy), not named arrays; the file needs {list(required)}.')
    with f:
        missing = [k for k in required if k not in f.files]
        if missing:
            raise ValueError(f'{path}: no {missing} array (it holds {f.files}); the file needs {list(required)}.')
        try:
            return {k: f[k] for k in f.files}
        except unreadable as e:
            if 'allow_pickle' in str(e):  # an object array: loading it would unpickle, i.e. run code
                raise ValueError(f'{path}: holds Python object arrays, which are not read (unpickling can run code); '
                                 f'save the images and labels as plain numeric arrays.') from None
            raise ValueError(f'{path}: its arrays cannot be read ({type(e).__name__}); the file is truncated or '
                             f'corrupt: replace it with a complete copy.') from None


def check_labelled_images(
        source: str,
        images: np.ndarray,
        labels: np.ndarray,
        num_classes: int,
        image_size: Optional[Tuple[int, int]] = None,
) -> None:
    """Fail with a message naming ``source`` unless ``images`` are RGB uint8 [N, H, W, 3] with one label in
    [0, num_classes) each (an out-of-range label would be dropped from a long-tailed cut, or crash evaluation)."""
    size = 'H, W' if image_size is None else ', '.join(map(str, image_size))
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or \
            (image_size is not None and tuple(images.shape[1:3]) != tuple(image_size)):
        raise ValueError(f'{source}: images must be uint8 [N, {size}, 3] (RGB, channels last), '
                         f'got {images.dtype} {list(images.shape)}.')
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f'{source}: {len(images)} images but labels of shape {list(labels.shape)}; '
                         f'give one label per image.')
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'{source}: labels must be integers, got {labels.dtype}.')
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise ValueError(f'{source}: {len(bad)} labels outside [0, {num_classes}) (first: {labels[bad[0]]} at '
                         f'index {bad[0]}); labels are class indices of the {num_classes} classes.')


class ArrayLTDataset(Dataset):
    """A labelled uint8 image array held in memory, with the training class counts it was cut from.

    Holding the raw array (``data``, [N, H, W, C] uint8) lets the trainer skip per-image PIL work and augment whole
    batches on the device (``rsg_timm.data.transforms.TensorBatchLoader``); ``__getitem__`` still gives the usual
    ``(PIL image or transform(img), label)`` pair for a plain DataLoader.

    Args:
        data: images [N, H, W, C] uint8.
        targets: label of each image.
        classes: label names.
        class_counts: training images per class (of the train split, also when this is the test split).
        transform: optional torchvision-style transform applied to the PIL image.
        source: where the arrays come from, for error messages.
    """

    def __init__(
            self,
            data: np.ndarray,
            targets: Sequence[int],
            classes: Sequence[str],
            class_counts: Sequence[int],
            transform: Optional[Callable] = None,
            source: str = 'the image array',
    ):
        check_labelled_images(source, data, np.asarray(targets), len(classes))
        if len(class_counts) != len(classes):
            raise ValueError(f'{source}: {len(class_counts)} class counts for {len(classes)} classes.')
        self.data = data
        self.targets = [int(t) for t in targets]
        self.classes = [str(c) for c in classes]
        self.class_counts = [int(n) for n in class_counts]
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Tuple[object, int]:
        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def load_cifar_arrays(
        root: str,
        num_classes: int,
        train: bool,
        download: bool = False,
) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Full CIFAR-10/100 split as (images [N, 32, 32, 3] uint8, labels int64, class names), in file order.

    Looks for ``cifar{C}_{train,test}.npz`` in ``root`` first (``classes`` is optional there: the names default to
    the class indices), then torchvision's folder layout (downloaded there when ``download`` is set).
    """
    split = 'train' if train else 'test'
    npz_path = os.path.join(root, f'cifar{num_classes}_{split}.npz')
    if os.path.isfile(npz_path):
        arrays = read_npz(npz_path, ('images', 'labels'))
        images, labels = arrays['images'], arrays['labels']
        check_labelled_images(npz_path, images, labels, num_classes, image_size=(32, 32))
        classes = [str(c) for c in arrays.get('classes', range(num_classes))]
        if len(classes) != num_classes:
            raise ValueError(f'{npz_path}: {len(classes)} class names for CIFAR-{num_classes}; drop the classes '
                             f'array or give {num_classes} names.')
        return images, labels.astype(np.int64), classes

    import torchvision
    tv_cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    tv_dir = os.path.join(root, tv_cls.base_folder)
    if not download and not os.path.isdir(tv_dir):
        raise FileNotFoundError(
            f'No CIFAR-{num_classes} data under {root!r}: expected {npz_path!r} (npz layout) or the torchvision '
            f'folder {tv_dir!r}. Point --data-dir at one of them, or add --dataset-download to fetch it.')
    ds = tv_cls(root, train=train, download=download)
    return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


class CifarLT(ArrayLTDataset):
    """CIFAR-10-LT / CIFAR-100-LT (train: long-tailed cut; test: the full balanced test set).

    Args:
        root: folder holding the npz files or torchvision's CIFAR folder.
        num_classes: 10 or 100.
        train: training split (long-tailed) or test split (balanced).
        imb_type: ``exp``, ``step`` or ``none``.
        imb_factor: 1 / rho (0.01 for rho = 100).
        imb_select: ``first`` (RSG code) or ``shuffle`` (LDAM-DRW's seeded draw); same counts, different images.
        download: let torchvision download the data when it is missing.
        transform: optional torchvision-style transform.
    """

    def __init__(
            self,
            root: str,
            num_classes: int = 10,
            train: bool = True,
            imb_type: str = 'exp',
            imb_factor: float = 0.01,
            imb_select: str = 'first',
            download: bool = False,
            transform: Optional[Callable] = None,
    ):
        if num_classes not in _CIFAR_TRAIN_PER_CLASS:
            raise ValueError(f'CIFAR-LT has 10 or 100 classes, got num_classes={num_classes}.')
        counts = long_tail_counts(_CIFAR_TRAIN_PER_CLASS[num_classes], num_classes, imb_type, imb_factor)
        images, labels, classes = load_cifar_arrays(root, num_classes, train=train, download=download)
        if train:
            keep = select_long_tail(labels, counts, imb_select)
            images, labels = images[keep], labels[keep]
            counts = np.bincount(labels, minlength=num_classes).tolist()
        super().__init__(images, labels, classes, counts, transform=transform)
        if train:
            _logger.info('CIFAR-%d-LT train: %d images (%s, imb_factor=%g, %s selection).',
                         num_classes, len(self), imb_type, imb_factor, imb_select)
        else:  # the test split is never cut; the profile only sets the counts behind many/medium/few
            _logger.info('CIFAR-%d-LT test: %d images, balanced (many/medium/few by the %s, imb_factor=%g training '
                         'profile).', num_classes, len(self), imb_type, imb_factor)
