"""The training step and the evaluation loop shared by ``train.py`` and ``validate.py``.

The scripts parse flags and wire objects; everything that runs per batch or switches per epoch lives here and takes
explicit arguments. A model whose ``forward`` accepts ``target=`` (the ``rsg_*`` models) is called with the labels
in training and may return, instead of logits, an output with ``logits``, ``target`` (the labels of the rows of
``logits``, generated samples included) and ``aux_losses``, a dict of named loss terms: the engine adds every term
to the criterion's loss and meters each under its name, whatever the model calls it.
"""
import inspect
import logging
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import dispatch_clip_grad, unwrap_model

from .constants import TRAIN_METRICS
from .metrics import LongTailEvaluator

__all__ = ['NonFiniteLossError', 'DivergedError', 'check_divergence', 'train_one_epoch', 'evaluate',
           'autocast_context', 'format_loss_terms', 'DIVERGED_CE']

_logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised before the optimizer step when the loss is NaN or infinite; carries where and which terms."""

    def __init__(self, epoch: int, step: int, terms: Dict[str, float],
                 hint: str = 'Lower --lr, add --clip-grad, or check the data.'):
        self.epoch, self.step, self.terms = epoch, step, terms
        named = ', '.join(f'{k}={v:.6g}' for k, v in terms.items())
        super().__init__(f'non-finite loss at epoch {epoch}, step {step} ({named}); the weights were not updated. '
                         f'{hint}')


# A chance-level classifier has CE ln C (2.3 for 10 classes, 6.9 for 1000), and LDAM's default s on cosine logits
# keeps it below ~75; a mean CE above this means the logits are off any sane scale and the run will not recover.
DIVERGED_CE = 100.0


class DivergedError(RuntimeError):
    """Raised after an epoch whose mean training CE exploded; the message names the likely cause."""

    def __init__(self, epoch: int, train_ce: float, eval_loss: float, hint: str):
        self.epoch, self.train_ce, self.eval_loss = epoch, train_ce, eval_loss
        super().__init__(
            f'training diverged at epoch {epoch}: mean CE {train_ce:.4g} (train), {eval_loss:.4g} (eval), where a '
            f'chance-level classifier scores ln(classes). {hint}')


def check_divergence(epoch: int, train_ce: float, eval_loss: float, hint: str = '') -> None:
    """Raise :class:`DivergedError` when the epoch's mean training CE is above :data:`DIVERGED_CE`.

    The evaluation loss is reported, not tested: after a few steps BatchNorm's running statistics alone can put it in
    the thousands on a healthy run.
    """
    if train_ce > DIVERGED_CE:
        raise DivergedError(epoch, train_ce, eval_loss, hint or 'Lower --lr, add warm-up or --clip-grad.')


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``amp_dtype`` on ``device``, or a no-op context without AMP."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _takes_target(model: nn.Module) -> bool:
    return 'target' in inspect.signature(unwrap_model(model).forward).parameters


def _set_epoch(obj: Any, epoch: int) -> None:
    if hasattr(obj, 'set_epoch'):
        obj.set_epoch(epoch)


def train_one_epoch(
        model: nn.Module,
        loader: Iterable,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        epoch: int,
        device: torch.device,
        amp_dtype: Optional[torch.dtype] = None,
        loss_scaler: Optional[torch.amp.GradScaler] = None,
        lr_scheduler: Any = None,
        reweight: Any = None,
        clip_grad: Optional[float] = None,
        clip_mode: str = 'norm',
        channels_last: bool = False,
        log_interval: int = 50,
        log_seconds: Optional[float] = None,
        num_epochs: Optional[int] = None,
        progress: bool = False,
        non_finite_hint: Optional[str] = None,
) -> Dict[str, float]:
    """Train for one epoch, after switching everything that changes per epoch: the model's phase and the sampler
    (``set_epoch``) and the criterion's class weights (``reweight.weight_for_epoch``).

    Args:
        reweight: a re-weighting schedule (``rsg_timm.losses.create_reweight``); None leaves the criterion as it is.
        log_interval: log a line every this many steps (0: never) when there is no progress bar.
        log_seconds: also log once this many seconds have passed since the last line, so a log file (nohup,
            Slurm) shows a run is alive even when an epoch has fewer steps than ``log_interval``.
        num_epochs: the run's length, shown as ``epoch (epoch + 1/num_epochs)``.
        non_finite_hint: what a :class:`NonFiniteLossError` advises, when the caller knows the likely cause.

    Returns:
        Means over the epoch of ``loss`` (the total), ``ce`` (the criterion) and each auxiliary term the model named
        (an rsg_* model: ``cesc`` and ``mv``, weighted, so that ``loss = ce + cesc + mv``), the mean number of
        ``generated`` samples per batch, ``top1`` on the real training samples, the final ``lr`` and
        ``images_per_sec`` (real images).
    """
    model.train()
    with_target = _takes_target(model)
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)
    _set_epoch(unwrap_model(model), epoch)
    _set_epoch(loader, epoch)
    if reweight is not None:
        criterion.set_class_weight(reweight.weight_for_epoch(epoch))
    num_batches = len(loader)
    num_updates = epoch * num_batches  # as timm: the per-update schedule needs no state carried between epochs
    sums: Dict[str, torch.Tensor] = {}  # summed on device: one host read per log line
    seen, generated, start = 0, 0, time.perf_counter()
    last_log = start
    run_epoch = f'{epoch} ({epoch + 1}/{num_epochs})' if num_epochs else f'{epoch}'
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, total=num_batches, desc=f'train epoch {run_epoch}', leave=False, dynamic_ncols=True)

    for step, (images, target) in enumerate(batches):
        # 1. batch to device
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)

        # 2-3. forward and the named loss terms
        with autocast_context(device, amp_dtype):
            out = model(images, target=target) if with_target else model(images)
        if isinstance(out, torch.Tensor):
            logits, loss_target, aux_losses = out, target, {}
        else:
            logits, loss_target, aux_losses = out.logits, out.target, out.aux_losses
        ce = criterion(logits.float(), loss_target)
        aux = sum(aux_losses.values()) if aux_losses else 0.0
        loss = ce + aux
        terms = dict(loss=loss, ce=ce, **aux_losses)
        # what is differentiated: under DDP, the classifier loss as this process's share of one mean over every
        # process's rows (RSG makes their counts differ), since DDP averages the processes' gradients
        objective = ce * _share_of_global_mean(criterion, loss_target) + aux if distributed else loss

        # 4. stop before the update when the loss is not finite (one host read per step)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(epoch, step, {k: float(v.detach()) for k, v in terms.items()},
                                     *([non_finite_hint] if non_finite_hint else []))

        # 5-8. backward, clip, step, zero
        if loss_scaler is not None:
            loss_scaler.scale(objective).backward()
            if clip_grad is not None:
                loss_scaler.unscale_(optimizer)
                dispatch_clip_grad(model.parameters(), clip_grad, mode=clip_mode)
            loss_scaler.step(optimizer)
            loss_scaler.update()
        else:
            objective.backward()
            if clip_grad is not None:
                dispatch_clip_grad(model.parameters(), clip_grad, mode=clip_mode)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        # 9. per-update schedule
        num_updates += 1
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)

        # 10. meters, kept on device
        terms['correct'] = (logits[:target.numel()].argmax(-1) == target).sum()
        for name, value in terms.items():
            value = value.detach().float()
            sums[name] = sums[name] + value if name in sums else value
        generated += loss_target.numel() - target.numel()
        seen += target.numel()

        # 11. log at the interval or after log_seconds (host read of the meters); CE first, the auxiliary terms beside
        now = time.perf_counter()
        if not progress and ((log_interval and (step + 1) % log_interval == 0)
                             or (log_seconds and now - last_log >= log_seconds)):
            last_log = now
            _logger.info(f'train epoch {run_epoch} step {step + 1}/{num_batches}: '
                         f'{format_loss_terms(_means(sums, step + 1))} lr {optimizer.param_groups[0]["lr"]:.3e} '
                         f'{seen / (now - start):.0f} img/s')

    elapsed = time.perf_counter() - start
    metrics = _means(sums, max(1, num_batches))  # host read: once per epoch
    correct = metrics.pop('correct', 0.0) * num_batches
    return dict(metrics, generated=generated / max(1, num_batches), top1=100.0 * correct / max(seen, 1),
                lr=optimizer.param_groups[0]['lr'], images_per_sec=seen / max(elapsed, 1e-9))


def _share_of_global_mean(criterion: nn.Module, target: torch.Tensor) -> torch.Tensor:
    """``W_p * world / sum_q W_q`` for this process's mean denominator ``W_p`` (rows, or their summed class weights;
    ``criterion.mean_denominator``): scaled by it, the processes' means average to one mean over all their rows.
    A criterion without ``mean_denominator`` is taken to be a plain mean over rows."""
    if hasattr(criterion, 'mean_denominator'):
        local = criterion.mean_denominator(target).detach().float().reshape(())
    else:
        local = torch.tensor(float(target.shape[0]), device=target.device)
    total = local.clone()
    torch.distributed.all_reduce(total)
    return local * torch.distributed.get_world_size() / total


def _means(sums: Dict[str, torch.Tensor], count: int) -> Dict[str, float]:
    if not sums:
        return {}
    values = (torch.stack(list(sums.values())) / count).tolist()  # one host read for all meters
    return dict(zip(sums, values))


def format_loss_terms(metrics: Dict[str, float]) -> str:
    """``ce 1.2345 (cesc 3.210, mv 0.012; total 4.5678)``: the classifier's loss first, then the auxiliary terms that
    sum with it to the total; ``ce 1.2345`` alone for a model without auxiliary terms."""
    aux = [k for k in metrics if k not in TRAIN_METRICS and k != 'correct']
    if not aux:
        return f'ce {metrics["ce"]:.4f}'
    named = ', '.join(f'{k} {metrics[k]:.3f}' for k in aux)
    return f'ce {metrics["ce"]:.4f} ({named}; total {metrics["loss"]:.4f})'



@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: Iterable,
        *,
        device: torch.device,
        num_classes: int,
        class_counts: Optional[Sequence[int]] = None,
        label_names: Optional[Sequence[str]] = None,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        logit_scale: float = 1.0,
        logit_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        progress: bool = False,
        distributed: bool = False,
        log_interval: int = 0,
) -> Tuple[Dict[str, float], LongTailEvaluator]:
    """Evaluate a classifier: loss, top-1/top-5, many/medium/few, ECE.

    Args:
        logit_scale: the factor the training loss applied to the logits (LDAM's s on a cosine head
            whose logits lie in [-1, 1]; see ``posthoc.training_logit_scale``). Loss and ECE are computed on the
            logits times it, the scale the model was fitted at; accuracy does not depend on it. The metrics
            record it as ``logit_scale`` (summary.csv's ``eval_logit_scale``), so a reader knows which scale they
            are on.
        logit_transform: optional post-hoc change of the scaled logits (e.g. logit adjustment) before any metric.
        distributed: each rank saw a shard of the data; sum the statistics over ranks before computing.
        log_interval: without ``progress``, log the batches done, the speed and the top-1 so far every this many
            batches (0: never), so that a long evaluation shows it is alive.

    Returns:
        The metrics dict and the evaluator (per-class table, confusion matrix).
    """
    model.eval()
    evaluator = LongTailEvaluator(num_classes, class_counts=class_counts, label_names=label_names, device=device)
    loss_sum = torch.zeros(2, device=device)  # summed loss, sample count
    batches = loader
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(loader, total=len(loader), desc='eval', leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    for step, (images, target) in enumerate(batches):
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_context(device, amp_dtype):
            logits = model(images)
        logits = logits.float() * logit_scale
        if logit_transform is not None:
            logits = logit_transform(logits)
        loss_sum[0] += nn.functional.cross_entropy(logits, target, reduction='sum')
        loss_sum[1] += target.numel()
        evaluator.update(logits, target)
        if not progress and log_interval and (step + 1) % log_interval == 0:
            seen, top1 = evaluator.running_top1()  # host read: once per log line
            _logger.info(f'eval batch {step + 1}/{len(loader)}: {seen / (time.perf_counter() - start):.0f} img/s, '
                         f'top1 so far {top1:.2f}')
    if distributed:
        torch.distributed.all_reduce(loss_sum)
        evaluator.synchronize()
    total, count = loss_sum.tolist()  # host read: once per evaluation
    metrics = {'loss': total / max(count, 1.0)}
    metrics.update(evaluator.compute())
    metrics = {k: (float('nan') if v is None else v) for k, v in metrics.items()}
    metrics['logit_scale'] = float(logit_scale)
    return metrics, evaluator
