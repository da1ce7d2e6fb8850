"""Long-tail losses and class re-weighting schedules, each behind a small name registry.

Losses (all take ``(logits [B, C], target)``, where ``target`` holds class indices ``[B]`` or class
probabilities ``[B, C]``, and accept a per-class ``weight`` that a schedule may change every epoch):

* ``ce``: cross-entropy.
* ``focal``: focal loss in the LDAM-DRW form (Lin et al., ICCV 2017; Cao et al., NeurIPS 2019).
* ``ldam``: label-distribution-aware margin loss (Cao et al., NeurIPS 2019).
* ``balanced_softmax``: cross-entropy on ``z + log n`` (Ren et al., NeurIPS 2020).
* ``logit_adjusted``: cross-entropy on ``z + log(pi^tau + 1e-12)`` (Menon et al., ICLR 2021).

Schedules: ``none``, ``cb`` (class-balanced "effective number" weights, Cui et al., CVPR 2019) and
``drw`` (deferred re-weighting: uniform, then class-balanced from ``drw_epoch``; Cao et al.).

Every loss computes in float32 whatever the autocast dtype, and moves its per-class tensors to the
logits' device on first use, so it runs on any device without host syncs.
"""
import inspect
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import Registry

__all__ = [
    'register_loss', 'list_losses', 'create_loss', 'loss_kwargs',
    'register_reweight', 'list_reweights', 'create_reweight',
    'effective_number_weights', 'ldam_margins', 'log_prior', 'LDAM_DEFAULT_S',
    'CrossEntropyLoss', 'FocalLoss', 'LDAMLoss', 'BalancedSoftmaxLoss', 'LogitAdjustedLoss',
    'NoReweight', 'ClassBalancedReweight', 'DeferredReweight',
]

ClassCounts = Union[Sequence[int], np.ndarray, torch.Tensor]


class _LossEntry(NamedTuple):
    builder: Callable[..., nn.Module]
    arg_map: Dict[str, str]  # argparse dest -> constructor kwarg


_LOSSES = Registry('loss')
_REWEIGHTS = Registry('re-weighting schedule')


# helpers

def _counts(class_counts: ClassCounts, *, positive: bool = True) -> torch.Tensor:
    """Validate training images per class and return them as float64 ``[C]`` (exact powers and logs)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64, device='cpu').flatten()
    if counts.numel() == 0:
        raise ValueError('class_counts is empty; pass the number of training images of every class.')
    bad = (counts <= 0) if positive else (counts < 0)
    if bad.any():
        ids = bad.nonzero().flatten()[:10].tolist()
        need = 'positive' if positive else 'non-negative'
        raise ValueError(f'class_counts must be {need}; bad classes (first 10): {ids}.')
    return counts


def _accepts(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def effective_number_weights(class_counts: ClassCounts, beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^n_j)`` rescaled to sum to C (Cui et al., CVPR 2019).

    ``beta=0`` gives all ones and ``beta -> 1`` approaches inverse frequency.

    Returns:
        float32 weights ``[C]``.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f'beta must be in [0, 1), got {beta}.')
    counts = _counts(class_counts)
    weights = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return (weights * counts.numel() / weights.sum()).float()


def ldam_margins(class_counts: ClassCounts, max_m: float = 0.5) -> torch.Tensor:
    """LDAM margins ``m_j ~ n_j^(-1/4)``, scaled so the rarest class gets ``max_m`` (float32 ``[C]``)."""
    margins = _counts(class_counts).pow(-0.25)
    return (margins * (max_m / margins.max())).float()


def log_prior(class_counts: ClassCounts, tau: float = 1.0) -> torch.Tensor:
    """``log(pi_j^tau + 1e-12)`` with ``pi_j = n_j / N``, as the logit-adjustment reference code forms it.

    The epsilon keeps classes without training images finite.
    """
    counts = _counts(class_counts, positive=False)
    return torch.log((counts / counts.sum()).pow(tau) + 1e-12).float()


# loss registry

def register_loss(name: str, *, arg_map: Optional[Dict[str, str]] = None) -> Callable:
    """Register a loss class (or factory) under ``name``.

    Args:
        name: registry name, as given to ``--loss``.
        arg_map: argparse destinations read by ``loss_kwargs`` mapped to constructor kwargs,
            e.g. ``{'focal_gamma': 'gamma'}``.
    """
    def _decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _LOSSES.add(name, _LossEntry(builder, dict(arg_map or {})))
        return builder
    return _decorate


def list_losses() -> List[str]:
    """Sorted names of the registered losses."""
    return _LOSSES.names()


def create_loss(
        name: Union[str, nn.Module, type],
        *,
        class_counts: Optional[ClassCounts] = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a loss by registry name; an ``nn.Module`` instance is returned as is, a class is instantiated.

    Args:
        name: registry name, loss module or loss class.
        class_counts: training images per class; given only to losses whose constructor takes it.
        **kwargs: constructor arguments (unknown ones raise, so typos do not pass silently).
    """
    if isinstance(name, nn.Module):
        if kwargs:
            raise ValueError(f'create_loss got a ready {type(name).__name__}; drop the kwargs {sorted(kwargs)}.')
        return name
    if isinstance(name, str):
        builder = _LOSSES.get(name).builder
    else:
        builder = name
    param = inspect.signature(builder).parameters.get('class_counts')
    if param is not None and class_counts is not None:
        kwargs['class_counts'] = class_counts
    elif param is not None and param.default is inspect.Parameter.empty:
        raise ValueError(
            f'Loss {name!r} needs class_counts (training images per class); '
            f'pass create_loss({name!r}, class_counts=dataset_counts).')
    return builder(**kwargs)


def loss_kwargs(args: Any) -> Dict[str, Any]:
    """Constructor kwargs for ``args.loss`` from an argparse namespace (flags left at ``None`` are skipped).

    The only function here that reads ``args``; e.g. ``--focal-gamma`` -> ``gamma``, ``--ldam-max-m`` ->
    ``max_m``, ``--ldam-s`` -> ``s``, ``--la-tau`` -> ``tau``.
    """
    name = getattr(args, 'loss', None)
    if name not in _LOSSES:
        return {}
    entry = _LOSSES.get(name)
    values = {kw: getattr(args, dest, None) for dest, kw in entry.arg_map.items()}
    return {kw: v for kw, v in values.items() if v is not None}


# losses

class _ClassWeightedLoss(nn.Module):
    """Base: an optional per-class weight plus per-class buffers that follow the logits' device."""

    def __init__(self, weight: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer('weight', None, persistent=False)
        self.set_class_weight(weight)

    def set_class_weight(self, weight: Optional[torch.Tensor]) -> None:
        """Set (or clear with ``None``) the per-class weights ``[C]``; called by re-weighting schedules."""
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32).flatten()
        self.weight = weight

    def _prepare(self, logits: torch.Tensor) -> torch.Tensor:
        """Move buffers to the logits' device once (no-op afterwards) and return float32 logits."""
        for name, buf in self.named_buffers(recurse=False):
            if buf.device != logits.device:
                setattr(self, name, buf.to(logits.device, non_blocking=True))
        if self.weight is not None and self.weight.numel() != logits.shape[-1]:
            raise ValueError(
                f'class weight has {self.weight.numel()} entries but logits have {logits.shape[-1]} classes.')
        return logits.float()

    def _cross_entropy(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = 'mean') -> torch.Tensor:
        return F.cross_entropy(logits, target, weight=self.weight, reduction=reduction)

    def mean_denominator(self, target: torch.Tensor) -> torch.Tensor:
        """What the batch mean divides by: the rows' summed class weights (PyTorch's weighted mean, class-index
        targets), else the row count. DDP training rescales each process's mean by it to one mean over all rows."""
        if self.weight is not None and target.dim() == 1:
            return self.weight.to(target.device)[target].sum()
        return torch.tensor(float(target.shape[0]), device=target.device)


@register_loss('ce')
class CrossEntropyLoss(_ClassWeightedLoss):
    """Cross-entropy (weighted mean over the batch when class weights are set, as in PyTorch)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._cross_entropy(self._prepare(logits), target)


@register_loss('focal', arg_map={'focal_gamma': 'gamma'})
class FocalLoss(_ClassWeightedLoss):
    """Focal loss as LDAM-DRW writes it: ``mean((1 - p)^gamma * ce)`` with ``p = exp(-ce)``.

    ``ce`` is the per-sample (class-weighted) cross-entropy, and the mean is a plain mean over the
    batch. ``gamma=1`` is the RSG / LDAM-DRW CIFAR setting; ``gamma=0`` gives plain CE when unweighted.
    """

    def __init__(self, gamma: float = 1.0, weight: Optional[torch.Tensor] = None):
        super().__init__(weight)
        if gamma < 0:
            raise ValueError(f'focal gamma must be >= 0, got {gamma}.')
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = self._cross_entropy(self._prepare(logits), target, reduction='none')
        return ((1.0 - torch.exp(-ce)).pow(self.gamma) * ce).mean()

    def mean_denominator(self, target: torch.Tensor) -> torch.Tensor:
        """The row count: the class weights enter each row's term, the mean is a plain one."""
        return torch.tensor(float(target.shape[0]), device=target.device)

    def extra_repr(self) -> str:
        return f'gamma={self.gamma}'


# LDAM's logit scale when none is given: the one source for what a run trained with when --ldam-s was unset.
LDAM_DEFAULT_S = 30.0


@register_loss('ldam', arg_map={'ldam_max_m': 'max_m', 'ldam_s': 's'})
class LDAMLoss(_ClassWeightedLoss):
    """LDAM: subtract the margin ``m_y`` from the target logit only, scale all logits by ``s``, then CE.

    Meant for cosine logits (a normed classifier), hence the scale. For probability targets the
    margin is ``target * m`` per class, which equals the hard-label form on one-hot targets.
    """

    def __init__(
            self,
            class_counts: ClassCounts,
            max_m: float = 0.5,
            s: float = LDAM_DEFAULT_S,
            weight: Optional[torch.Tensor] = None,
    ):
        super().__init__(weight)
        if max_m <= 0 or s <= 0:
            raise ValueError(f'LDAM needs max_m > 0 and s > 0, got max_m={max_m}, s={s}.')
        self.register_buffer('margins', ldam_margins(class_counts, max_m), persistent=False)
        self.max_m = max_m
        self.s = s

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self._prepare(logits)
        if target.is_floating_point():
            on_target = target.float()
        else:
            on_target = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1.0)  # one-hot, no value check
        return self._cross_entropy(self.s * (logits - on_target * self.margins), target)

    def extra_repr(self) -> str:
        return f'num_classes={self.margins.numel()}, max_m={self.max_m}, s={self.s}'


class _LogitOffsetLoss(_ClassWeightedLoss):
    """CE on ``z + offset`` with a fixed per-class offset ``[C]``; the raw logits are used at test time."""

    def __init__(self, offset: torch.Tensor, weight: Optional[torch.Tensor] = None):
        super().__init__(weight)
        self.register_buffer('offset', offset, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._cross_entropy(self._prepare(logits) + self.offset, target)


@register_loss('balanced_softmax')
class BalancedSoftmaxLoss(_LogitOffsetLoss):
    """Balanced Softmax: CE on ``z_j + log n_j`` (BALMS)."""

    def __init__(self, class_counts: ClassCounts, weight: Optional[torch.Tensor] = None):
        super().__init__(_counts(class_counts).log().float(), weight)


@register_loss('logit_adjusted', arg_map={'la_tau': 'tau'})
class LogitAdjustedLoss(_LogitOffsetLoss):
    """Logit-adjusted loss: CE on ``z_j + log(pi_j^tau + 1e-12)``; ``tau=1`` equals Balanced Softmax."""

    def __init__(self, class_counts: ClassCounts, tau: float = 1.0, weight: Optional[torch.Tensor] = None):
        super().__init__(log_prior(class_counts, tau), weight)
        self.tau = tau

    def extra_repr(self) -> str:
        return f'tau={self.tau}'


# re-weighting schedules

def register_reweight(name: str) -> Callable:
    """Register a re-weighting schedule (a class whose instances have ``weight_for_epoch``)."""
    return _REWEIGHTS.decorator(name)


def list_reweights() -> List[str]:
    """Sorted names of the registered re-weighting schedules."""
    return _REWEIGHTS.names()


def create_reweight(
        name: str,
        class_counts: Optional[ClassCounts] = None,
        *,
        beta: float = 0.9999,
        drw_epoch: int = 160,
) -> Any:
    """Build a schedule; each one receives only the arguments its constructor names.

    Args:
        name: ``none``, ``cb``, ``drw`` or a registered plugin.
        class_counts: training images per class (needed by ``cb`` and ``drw``).
        beta: effective-number beta.
        drw_epoch: first (0-based) epoch with class-balanced weights under ``drw``.
    """
    builder = _REWEIGHTS.get(name)
    offered = dict(class_counts=class_counts, beta=beta, drw_epoch=drw_epoch)
    kwargs = {k: v for k, v in offered.items() if _accepts(builder, k)}
    if 'class_counts' in kwargs and class_counts is None:
        raise ValueError(f'Re-weighting {name!r} needs class_counts (training images per class).')
    return builder(**kwargs)


@register_reweight('none')
class NoReweight:
    """Every class weighs the same at every epoch."""

    def weight_for_epoch(self, epoch: int) -> Optional[torch.Tensor]:
        return None

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


@register_reweight('cb')
class ClassBalancedReweight:
    """Class-balanced effective-number weights at every epoch."""

    def __init__(self, class_counts: ClassCounts, beta: float = 0.9999):
        self.weights = effective_number_weights(class_counts, beta)
        self.beta = beta

    def weight_for_epoch(self, epoch: int) -> Optional[torch.Tensor]:
        return self.weights

    def __repr__(self) -> str:
        return f'{type(self).__name__}(num_classes={self.weights.numel()}, beta={self.beta})'


@register_reweight('drw')
class DeferredReweight(ClassBalancedReweight):
    """DRW: uniform weights (``None``) for 0-based epochs ``< drw_epoch``, class-balanced from then on.

    LDAM-DRW and RSG switch at epoch 160 of 200, together with the first learning-rate drop.
    """

    def __init__(self, class_counts: ClassCounts, beta: float = 0.9999, drw_epoch: int = 160):
        super().__init__(class_counts, beta)
        if drw_epoch < 0:
            raise ValueError(f'drw_epoch must be >= 0, got {drw_epoch}.')
        self.drw_epoch = drw_epoch

    def weight_for_epoch(self, epoch: int) -> Optional[torch.Tensor]:
        return self.weights if epoch >= self.drw_epoch else None

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}, drw_epoch={self.drw_epoch})'
