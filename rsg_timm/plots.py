"""PNG figures of a run: per-class accuracy against training images, and the per-epoch training curves.

matplotlib is optional (the ``[plot]`` extra): without it every plot is skipped with a log line and returns None.
"""
import logging
import os
from typing import Any, Optional, Sequence, Tuple

import pandas as pd

from .atomic import atomic_write
from .constants import FEW_SHOT_BELOW, MANY_SHOT_ABOVE, TRAIN_METRICS

__all__ = ['plot_per_class_accuracy', 'plot_training_curves']

_logger = logging.getLogger(__name__)


def plot_per_class_accuracy(per_class: pd.DataFrame, path: str) -> Optional[str]:
    """Scatter per-class accuracy against training images (log x axis) to a PNG; long-tail trends at a glance.

    Args:
        per_class: ``LongTailEvaluator.per_class()`` table (needs ``train_count``).
        path: output PNG file.

    Returns:
        ``path``, or None when matplotlib is not installed (``pip install rsg_timm[plot]``).
    """
    if 'train_count' not in per_class:
        raise ValueError('per_class has no train_count column; build the evaluator with class_counts.')
    try:
        from matplotlib.figure import Figure  # optional dependency; Figure avoids pyplot's global state
    except ImportError:
        _logger.info('matplotlib is not installed; skipping the per-class accuracy plot %s.', path)
        return None
    fig = Figure(figsize=(6, 4), dpi=120)
    ax = fig.add_subplot()
    ax.scatter(per_class['train_count'], per_class['accuracy'], s=12)
    ax.set_xscale('log')
    ax.axvline(MANY_SHOT_ABOVE, color='grey', linestyle='--', linewidth=0.8)
    ax.axvline(FEW_SHOT_BELOW, color='grey', linestyle='--', linewidth=0.8)
    ax.set_xlabel('training images per class')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.set_ylim(-2, 102)
    _save_figure(fig, path)
    return path


def _save_figure(fig: Any, path: str) -> None:
    """Write ``fig`` as a PNG in one step: a run redoes its figures on --resume, and a kill must not leave half."""
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, 'wb') as f:
        fig.savefig(f, format='png')


def _loss_columns(columns: Sequence[str]) -> Tuple[str, ...]:
    """The loss curves of a summary: the criterion, every auxiliary term the model named, the evaluation loss."""
    aux_terms = [c for c in columns if c.startswith('train_') and c[len('train_'):] not in TRAIN_METRICS]
    return ('train_ce', *aux_terms, 'eval_loss')


def plot_training_curves(summary_csv: str, path: str) -> Optional[str]:
    """Plot a run's ``summary.csv`` per epoch to a PNG: the loss terms (log scale), top-1 with many/medium/few, and
    the learning rate, so a diverging or stalled run shows at a glance.

    Returns:
        ``path``, or None when matplotlib is not installed (``pip install rsg_timm[plot]``).
    """
    try:
        from matplotlib.figure import Figure  # optional dependency; Figure avoids pyplot's global state
    except ImportError:
        _logger.info('matplotlib is not installed; skipping the training curves %s.', path)
        return None
    summary = pd.read_csv(summary_csv)
    fig = Figure(figsize=(12, 3.6), dpi=110)
    panels = (
        ('loss (log scale)', _loss_columns(summary.columns), True),
        ('top-1 (%)', ('train_top1', 'eval_top1', 'eval_many', 'eval_medium', 'eval_few'), False),
        ('learning rate', ('lr',), True),
    )
    for index, (title, columns, log_y) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), index + 1)
        for column in columns:
            values = summary.get(column)
            if values is None or not values.notna().any() or (log_y and not (values > 0).any()):
                continue  # e.g. no RSG terms for a plain backbone, no few-shot classes
            if log_y:
                values = values.where(values > 0)  # e.g. MV before generation starts: a gap, not a plunge
            ax.plot(summary['epoch'], values, marker='.', label=column.replace('eval_', 'test ').replace('_', ' '))
        if log_y:
            ax.set_yscale('log')
        ax.set_title(title)
        ax.set_xlabel('epoch')
        if len(columns) > 1:
            ax.legend(fontsize=7)
    _save_figure(fig, path)
    return path
