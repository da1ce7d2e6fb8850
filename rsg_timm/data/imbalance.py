"""Long-tailed class profiles and the image selection that realises them.

The profile rule is the one LDAM-DRW's ``imbalance_cifar.py`` introduced and RSG, RIDE, MiSLAS, PaCo and BBN reuse
(Cao et al., NeurIPS 2019); the counts are what every published CIFAR-LT number was trained on.
"""
import logging
from typing import List, Sequence

import numpy as np

__all__ = ['IMB_TYPES', 'IMB_SELECTS', 'long_tail_counts', 'select_long_tail']

_logger = logging.getLogger(__name__)

IMB_TYPES = ('exp', 'step', 'none')
IMB_SELECTS = ('first', 'shuffle')


def long_tail_counts(n_max: int, num_classes: int, imb_type: str = 'exp', imb_factor: float = 0.01) -> List[int]:
    """Per-class image counts of a long-tailed profile, class 0 being the head.

    Args:
        n_max: images of the largest class (5000 for CIFAR-10, 500 for CIFAR-100).
        num_classes: number of classes C.
        imb_type: ``exp`` (n_i = int(n_max * imb_factor ** (i / (C - 1)))), ``step`` (the first C // 2 classes keep
            n_max, the rest get int(n_max * imb_factor)) or ``none`` (balanced).
        imb_factor: 1 / rho, the ratio of the smallest to the largest class (0.01 for rho = 100).

    Returns:
        The count of each class in label order.
    """
    if imb_type not in IMB_TYPES:
        raise ValueError(f'Unknown imb_type {imb_type!r}; choose one of {list(IMB_TYPES)}.')
    if imb_type != 'none' and not 0.0 < imb_factor <= 1.0:
        raise ValueError(f'imb_factor must be in (0, 1] (it is 1/rho, e.g. 0.01 for rho=100), got {imb_factor}.')
    if imb_type == 'exp':
        if num_classes == 1:
            return [int(n_max)]
        # Python int() truncation of the float, exactly as the reference builder does.
        return [int(n_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]
    if imb_type == 'step':
        n_head = num_classes // 2
        return [int(n_max)] * n_head + [int(n_max * imb_factor)] * (num_classes - n_head)
    return [int(n_max)] * num_classes


def select_long_tail(targets: Sequence[int], counts: Sequence[int], imb_select: str = 'first') -> np.ndarray:
    """Indices that cut a labelled set down to ``counts`` images per class, grouped class by class.

    Args:
        targets: label of every image, in file order.
        counts: wanted images per class; a class with fewer images keeps all it has (logged once).
        imb_select: ``first`` keeps the first n_i images of each class in file order (the RSG code);
            ``shuffle`` is LDAM-DRW's seeded draw: one ``RandomState(0)`` stream (the same stream as the legacy
            ``np.random.seed(0)``) shuffles the indices of each class in ascending label order and keeps the
            first n_i, which reproduces that builder's images bit for bit.

    Returns:
        int64 indices into ``targets``: class 0's images first, then class 1's, and so on.
    """
    if imb_select not in IMB_SELECTS:
        raise ValueError(f'Unknown imb_select {imb_select!r}; choose one of {list(IMB_SELECTS)}.')
    targets = np.asarray(targets, dtype=np.int64)
    rng = np.random.RandomState(0) if imb_select == 'shuffle' else None
    chosen, short = [], []
    for cls, n in enumerate(counts):
        idx = np.flatnonzero(targets == cls)
        if rng is not None:
            rng.shuffle(idx)
        if len(idx) < n:
            short.append(cls)
        chosen.append(idx[:n])
    if short:
        _logger.warning('%d classes (first: %d) have fewer images than their profile asks for; keeping all of them.',
                        len(short), short[0])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
