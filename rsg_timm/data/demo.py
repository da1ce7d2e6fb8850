"""The embedded demo set: a small CIFAR-10-LT cut shipped inside the package.

It lets ``python train.py`` and the tests run on a fresh machine with no data and no network, while still having
many-, medium- and few-shot classes (exp profile, n_max = 300, rho = 30: 300 ... 10 images per class, RSG's
``first`` selection) and a balanced test split (the first 100 test images of each class, in file order).

Rebuild it from the CIFAR-10 npz files with::

    python -m rsg_timm.data.demo --build --source DIR_WITH_CIFAR10_NPZ
"""
import argparse
import logging
import os
from typing import Callable, Optional

import numpy as np

from .cifar_lt import ArrayLTDataset, load_cifar_arrays, read_npz
from .imbalance import long_tail_counts, select_long_tail

__all__ = ['DemoLT', 'DEMO_PATH', 'build_demo']

_logger = logging.getLogger(__name__)

DEMO_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo', 'cifar10_lt_demo.npz')
_DEMO_N_MAX = 300
_DEMO_IMB_FACTOR = 1 / 30
_DEMO_TEST_PER_CLASS = 100


class DemoLT(ArrayLTDataset):
    """The shipped CIFAR-10-LT demo cut (train: 928 long-tailed images, test: 1000 balanced).

    Args:
        train: training split or test split.
        path: another demo npz to read instead of the shipped one.
        transform: optional torchvision-style transform.
    """

    def __init__(self, train: bool = True, path: Optional[str] = None, transform: Optional[Callable] = None):
        path = path or DEMO_PATH
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'Demo data {path!r} is missing; reinstall rsg_timm or rebuild it with '
                f'`python -m rsg_timm.data.demo --build --source <folder with cifar10_train.npz>`.')
        split = 'train' if train else 'test'
        arrays = read_npz(path, (f'{split}_images', f'{split}_labels', 'classes', 'class_counts'))
        super().__init__(arrays[f'{split}_images'], arrays[f'{split}_labels'], arrays['classes'],
                         arrays['class_counts'], transform=transform, source=path)


def build_demo(source: str, path: str = DEMO_PATH) -> str:
    """Write the demo npz from the full CIFAR-10 npz files in ``source``; returns the path written."""
    train_x, train_y, classes = load_cifar_arrays(source, 10, train=True)
    test_x, test_y, _ = load_cifar_arrays(source, 10, train=False)
    counts = long_tail_counts(_DEMO_N_MAX, 10, 'exp', _DEMO_IMB_FACTOR)
    train_idx = select_long_tail(train_y, counts, 'first')
    test_idx = select_long_tail(test_y, [_DEMO_TEST_PER_CLASS] * 10, 'first')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez_compressed(
        path,
        train_images=train_x[train_idx], train_labels=train_y[train_idx],
        test_images=test_x[test_idx], test_labels=test_y[test_idx],
        classes=np.asarray(classes), class_counts=np.asarray(counts, dtype=np.int64),
    )
    _logger.info('Wrote %s (%.2f MB): train counts %s, %d test images.',
                 path, os.path.getsize(path) / 1e6, counts, len(test_idx))
    return path


def _main() -> None:
    parser = argparse.ArgumentParser(description='(Re)build the embedded CIFAR-10-LT demo set.')
    parser.add_argument('--build', action='store_true', help='write the demo npz')
    parser.add_argument('--source', default=os.path.join('..', 'shared', 'data'),
                        help='folder with cifar10_train.npz and cifar10_test.npz')
    parser.add_argument('--output', default=DEMO_PATH, help='where to write the npz')
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if not args.build:
        parser.error('nothing to do; pass --build')
    build_demo(args.source, args.output)


if __name__ == '__main__':
    _main()
