"""Long-tail evaluation: top-k, per-class and many/medium/few-shot accuracy, confusion matrix, ECE/MCE.

Definitions follow the long-tail papers the numbers are compared with:

* shot groups by training images per class n_j: many ``n_j > MANY_SHOT_ABOVE``, medium
  ``FEW_SHOT_BELOW <= n_j <= MANY_SHOT_ABOVE``, few ``n_j < FEW_SHOT_BELOW`` (Decoupling / OLTR thresholds 100
  and 20); a group accuracy is the unweighted mean of its classes' top-1 accuracies. An empty group is
  reported as NaN (shown as "n/a") together with the group sizes, rather than Decoupling's 0.
* ECE / MCE (MiSLAS ``utils/metric.py``): 15 equal-width bins on the top-1 softmax confidence, closed on
  the right, ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``, ``MCE = max_b |acc(B_b) - conf(B_b)|``.

Every accuracy and calibration number is a percentage. ``LongTailEvaluator`` accumulates on the
logits' device and reads back to the host only in ``compute``/``per_class``/``confusion``.
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import pandas as pd
import torch
import torch.distributed as dist

from .constants import FEW_SHOT_BELOW, MANY_SHOT_ABOVE
from .losses import ClassCounts

__all__ = [
    'SHOT_GROUPS', 'accuracy', 'per_class_accuracy', 'confusion_matrix', 'calibration_error',
    'shot_split', 'shot_accuracy', 'format_metrics', 'LongTailEvaluator',
]

SHOT_GROUPS = ('many', 'medium', 'few')
_ECE_BINS = 15
# Above this many classes the [C, C] confusion matrix (8 bytes per cell) is not kept unless asked for.
_MAX_CONFUSION_CLASSES = 1000


# helpers

def _stat_dtype(device: torch.device) -> torch.dtype:
    """float64 keeps counts exact past 2^24 samples; MPS has no float64."""
    return torch.float32 if device.type == 'mps' else torch.float64


def _class_stats(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class ``[2, C]`` (top-1 correct, test samples)."""
    dtype = _stat_dtype(target.device)
    correct = torch.bincount(target, weights=(pred == target).to(dtype), minlength=num_classes)
    total = torch.bincount(target, minlength=num_classes).to(dtype)
    return torch.stack([correct, total])


def _bin_stats(logits: torch.Tensor, target: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Per confidence bin ``[3, n_bins]`` (samples, correct, sum of confidence); bins are (b/n, (b+1)/n]."""
    conf, pred = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, device=conf.device)
    # bucketize(right=False) puts x in (edges[i-1], edges[i]], as np.digitize(..., right=True) does.
    idx = (torch.bucketize(conf, edges) - 1).clamp_(0, n_bins - 1)
    dtype = _stat_dtype(conf.device)
    stats = torch.zeros(3, n_bins, dtype=dtype, device=conf.device)
    stats[0].index_add_(0, idx, torch.ones_like(conf, dtype=dtype))
    stats[1].index_add_(0, idx, (pred == target).to(dtype))
    stats[2].index_add_(0, idx, conf.to(dtype))
    return stats


def _calibration_from_bins(stats: torch.Tensor) -> Tuple[float, float]:
    count, correct, conf = stats.cpu().unbind(0)
    if count.sum() == 0:
        return math.nan, math.nan
    seen = count > 0
    gaps = (correct[seen] - conf[seen]).abs() / count[seen]
    return (100.0 * (gaps * count[seen]).sum() / count.sum()).item(), (100.0 * gaps.max()).item()


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int]) -> torch.Tensor:
    """Number of samples whose target is within the top k, for each k (``k > C`` counts as ``k = C``)."""
    maxk = min(max(topk), logits.shape[-1])
    hits = logits.topk(maxk, dim=-1).indices == target.unsqueeze(-1)  # [B, maxk]
    cum = hits.cumsum(dim=-1).sum(dim=0)  # [maxk]: samples with the target within the top j + 1
    return torch.stack([cum[min(k, maxk) - 1] for k in topk]).to(_stat_dtype(logits.device))


def _check_topk(topk: Sequence[int]) -> Tuple[int, ...]:
    topk = tuple(int(k) for k in topk)
    if not topk or min(topk) < 1:
        raise ValueError(f'topk must be positive integers, got {topk}.')
    return topk


# functional metrics

def accuracy(logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> List[torch.Tensor]:
    """Top-k accuracy in percent for each k, as 0-dim tensors (no host sync), like ``timm.utils.accuracy``.

    A k larger than the number of classes counts every sample as correct instead of failing.
    """
    topk = _check_topk(topk)
    correct = _topk_correct(logits, target, topk) * (100.0 / max(target.shape[0], 1))
    return list(correct.float().unbind(0))


def per_class_accuracy(logits: torch.Tensor, target: torch.Tensor, num_classes: Optional[int] = None) -> torch.Tensor:
    """Top-1 accuracy in percent per class ``[C]``; NaN for classes without test samples."""
    num_classes = num_classes or logits.shape[-1]
    correct, total = _class_stats(logits.argmax(dim=-1), target, num_classes)
    return 100.0 * correct / total


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``[C, C]``: row = true class, column = predicted class."""
    flat = target.long() * num_classes + pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def calibration_error(logits: torch.Tensor, target: torch.Tensor, n_bins: int = _ECE_BINS) -> Tuple[float, float]:
    """(ECE, MCE) in percent of the top-1 softmax confidence, MiSLAS' definition."""
    return _calibration_from_bins(_bin_stats(logits, target, n_bins))


def shot_split(class_counts: ClassCounts) -> Dict[str, List[int]]:
    """Class ids per shot group, by training images: many > 100, 20 <= medium <= 100, few < 20."""
    counts = torch.as_tensor(class_counts, device='cpu').flatten().tolist()
    return {
        'many': [c for c, n in enumerate(counts) if n > MANY_SHOT_ABOVE],
        'medium': [c for c, n in enumerate(counts) if FEW_SHOT_BELOW <= n <= MANY_SHOT_ABOVE],
        'few': [c for c, n in enumerate(counts) if n < FEW_SHOT_BELOW],
    }


def shot_accuracy(class_accuracy: torch.Tensor, class_counts: ClassCounts) -> Dict[str, float]:
    """Many/medium/few accuracy (mean of per-class accuracies) plus ``<group>_classes`` sizes.

    Classes without test samples (NaN accuracy) are left out of the mean; an empty group gives NaN.
    """
    class_accuracy = class_accuracy.detach().cpu().double()
    if class_accuracy.numel() != len(class_counts):
        raise ValueError(f'{class_accuracy.numel()} per-class accuracies but {len(class_counts)} class counts.')
    out = {}
    for group, ids in shot_split(class_counts).items():
        acc = class_accuracy[ids]
        acc = acc[~acc.isnan()]
        out[group] = acc.mean().item() if acc.numel() else math.nan
        out[f'{group}_classes'] = len(ids)
    return out


def format_metrics(metrics: Dict[str, float], keys: Optional[Sequence[str]] = None, precision: int = 2) -> str:
    """One log line such as ``top1 71.30 many 90.10 few n/a``; NaN (e.g. an empty shot group) prints as n/a."""
    parts = []
    for key in keys or metrics:
        value = metrics[key]
        if isinstance(value, float) and math.isnan(value):
            parts.append(f'{key} n/a')
        elif isinstance(value, float):
            parts.append(f'{key} {value:.{precision}f}')
        else:
            parts.append(f'{key} {value}')
    return ' '.join(parts)


# streaming evaluator

class LongTailEvaluator:
    """Accumulates top-k, per-class, confusion and calibration statistics over batches.

    ``update`` only launches tensor ops on the logits' device; the host reads the (small) state back in
    ``compute``, ``per_class`` and ``confusion``. Under torch.distributed call ``synchronize()`` once
    before reading, so that every rank reports the global numbers.

    Args:
        num_classes: number of classes C.
        class_counts: training images per class, for the shot groups and the per-class table.
        label_names: class names for the tables.
        topk: top-k accuracies to report (``top{k}`` keys).
        track_confusion: keep the ``[C, C]`` confusion matrix; default only up to 1000 classes.
        device: where the state lives; default the device of the first ``update``'s logits.
    """

    def __init__(
            self,
            num_classes: int,
            class_counts: Optional[ClassCounts] = None,
            label_names: Optional[Sequence[str]] = None,
            topk: Sequence[int] = (1, 5),
            track_confusion: Optional[bool] = None,
            device: Optional[Union[str, torch.device]] = None,
    ):
        for name, seq in (('class_counts', class_counts), ('label_names', label_names)):
            if seq is not None and len(seq) != num_classes:
                raise ValueError(f'{name} has {len(seq)} entries but num_classes is {num_classes}.')
        self.num_classes = num_classes
        self.class_counts = None if class_counts is None else torch.as_tensor(class_counts, device='cpu').tolist()
        self.label_names = None if label_names is None else list(label_names)
        self.topk = _check_topk(topk)
        self.track_confusion = num_classes <= _MAX_CONFUSION_CLASSES if track_confusion is None else track_confusion
        self.device = device
        self.reset()

    def reset(self) -> None:
        """Zero the statistics (allocated on ``device``, or lazily on the next ``update``'s device)."""
        self._topk = self._class = self._bins = self._confusion = None
        if self.device is not None:
            self._allocate(torch.device(self.device))

    def _allocate(self, device: torch.device) -> None:
        dtype = _stat_dtype(device)
        self._topk = torch.zeros(len(self.topk), dtype=dtype, device=device)
        self._class = torch.zeros(2, self.num_classes, dtype=dtype, device=device)
        self._bins = torch.zeros(3, _ECE_BINS, dtype=dtype, device=device)
        if self.track_confusion:
            self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``logits [B, C]`` and class-index ``target [B]``."""
        if logits.shape[-1] != self.num_classes:
            raise ValueError(f'logits have {logits.shape[-1]} classes, the evaluator expects {self.num_classes}.')
        if self._topk is None:
            self._allocate(logits.device)
        logits = logits.to(self._topk.device, non_blocking=True)
        target = target.to(self._topk.device, non_blocking=True).long()
        pred = logits.argmax(dim=-1)
        self._topk += _topk_correct(logits, target, self.topk)
        self._class += _class_stats(pred, target, self.num_classes)
        self._bins += _bin_stats(logits, target, _ECE_BINS)
        if self._confusion is not None:
            self._confusion += confusion_matrix(pred, target, self.num_classes)

    def running_top1(self) -> Tuple[int, float]:
        """Images added so far and their top-1 (a host read; for progress lines during an evaluation)."""
        if self._class is None:
            return 0, 0.0
        correct, total = self._class.sum(dim=1).tolist()
        return int(total), 100.0 * correct / max(total, 1.0)

    def synchronize(self) -> None:
        """Sum the state over all processes of the default group (no-op outside torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._topk is None:
            raise RuntimeError('LongTailEvaluator.synchronize() needs the state; pass device= or update() first.')
        for state in (self._topk, self._class, self._bins, self._confusion):
            if state is not None:
                dist.all_reduce(state)

    def _require_data(self) -> None:
        if self._topk is None or not self._class[1].any():  # host sync; only called when reading results
            raise RuntimeError('LongTailEvaluator has no data; call update(logits, target) first.')

    def _class_accuracy(self) -> torch.Tensor:
        correct, total = self._class.cpu()
        return 100.0 * correct / total

    def compute(self) -> Dict[str, float]:
        """``top{k}``, ``ece``, ``mce`` and, given class counts, ``many``/``medium``/``few`` and ``<group>_classes``."""
        self._require_data()
        total = self._class[1].sum()
        topk = (100.0 * self._topk / total).cpu().tolist()
        out = {f'top{k}': acc for k, acc in zip(self.topk, topk)}
        if self.class_counts is not None:
            out.update(shot_accuracy(self._class_accuracy(), self.class_counts))
        out['ece'], out['mce'] = _calibration_from_bins(self._bins)
        return out

    def per_class(self) -> pd.DataFrame:
        """One row per class: id, label, train count, test count, correct, accuracy (%), shot group."""
        self._require_data()
        correct, total = self._class.cpu().long()
        table = pd.DataFrame({'class_id': range(self.num_classes)})
        if self.label_names is not None:
            table['label'] = self.label_names
        if self.class_counts is not None:
            table['train_count'] = self.class_counts
        table['test_count'] = total.numpy()
        table['correct'] = correct.numpy()
        table['accuracy'] = self._class_accuracy().numpy()
        if self.class_counts is not None:
            group = {c: g for g, ids in shot_split(self.class_counts).items() for c in ids}
            table['shot'] = [group[c] for c in range(self.num_classes)]
        return table

    def confusion(self) -> pd.DataFrame:
        """Confusion counts, rows = true class, columns = predicted class (labelled by name when known)."""
        self._require_data()
        if self._confusion is None:
            raise RuntimeError(
                f'The confusion matrix is not tracked for {self.num_classes} classes; '
                'create the evaluator with track_confusion=True.')
        names = self.label_names or list(range(self.num_classes))
        frame = pd.DataFrame(self._confusion.cpu().numpy(), index=names, columns=names)
        frame.index.name, frame.columns.name = 'true', 'predicted'
        return frame
