"""Continuing training from a checkpoint: the same run (``train.py --resume``) or a new run branched off another's
(``train.py --fork``), e.g. a plain backbone off an rsg_* run before RSG's generation phase.

Hacked together for rsg_timm; Apache-2.0.
"""
import argparse
import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from .checkpoint import load_training_checkpoint
from .constants import CLASS_COUNTS_KEY
from .models import CheckpointError, check_state_dict_fits
from .recipes import create_recipe_model, create_recipe_optimizer

__all__ = ['check_class_counts', 'resume_run', 'fork_run', 'fork_training_state']

_logger = logging.getLogger(__name__)


def check_class_counts(checkpoint: Dict[str, Any], class_counts: Sequence[int], source: str, verb: str) -> None:
    """A run continues only on the data it was trained on."""
    if checkpoint.get(CLASS_COUNTS_KEY) not in (None, list(class_counts)):
        raise CheckpointError(f'{source} trained on class counts {checkpoint[CLASS_COUNTS_KEY]}, not '
                              f'{class_counts}: {verb} with the same dataset flags')


def resume_run(checkpoint: Dict[str, Any], path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
               loss_scaler: Optional[torch.amp.GradScaler], class_counts: Sequence[int],
               restore_optimizer: bool = True) -> int:
    """Restore model (RSG included), optimizer, AMP scaler and RNG; returns the epoch to start from."""
    check_class_counts(checkpoint, class_counts, f'{path} was', 'resume')
    check_state_dict_fits(checkpoint['state_dict'], model, path)
    model.load_state_dict(checkpoint['state_dict'])
    if restore_optimizer and 'optimizer' in checkpoint:
        optimizer.load_state_dict(checkpoint['optimizer'])
    if loss_scaler is not None and 'amp_scaler' in checkpoint:
        loss_scaler.load_state_dict(checkpoint['amp_scaler'])
    if 'rng_state' in checkpoint:
        torch.set_rng_state(checkpoint['rng_state'])
    _logger.info(f'Resumed from {path} (epoch {checkpoint["epoch"]})')
    return int(checkpoint['epoch']) + 1


def fork_run(path: str, model: nn.Module, optimizer: torch.optim.Optimizer, class_counts: Sequence[int]) -> int:
    """Branch this run off the run that wrote ``path``; returns the epoch to start from."""
    checkpoint = load_training_checkpoint(path)
    source_args = checkpoint.get('args')
    if source_args is None or 'optimizer' not in checkpoint:
        raise CheckpointError(f'--fork {path}: not a train.py checkpoint (no args or optimizer state); fork from a '
                              f'run\'s last.pth.tar or checkpoint-<epoch>.pth.tar')
    check_class_counts(checkpoint, class_counts, f'--fork {path}:', 'fork')
    source_args = argparse.Namespace(**dict(vars(source_args), torchcompile=None, grad_checkpointing=False))
    source = create_recipe_model(source_args, len(class_counts), class_counts, start_weights=False)
    source.load_state_dict(checkpoint['state_dict'])
    source_optimizer = create_recipe_optimizer(source_args, source)
    source_optimizer.load_state_dict(checkpoint['optimizer'])
    dropped = fork_training_state(source, source_optimizer, unwrap_model(model), optimizer, source_name=path)
    torch.set_rng_state(checkpoint['rng_state'])
    _logger.info(f'Forked from {path} ({source_args.model}, epoch {checkpoint["epoch"]}); dropped {len(dropped)} '
                 f'tensors the new model lacks: {", ".join(dropped[:4])}{", ..." if len(dropped) > 4 else ""}')
    return int(checkpoint['epoch']) + 1


def fork_training_state(
        source: nn.Module,
        source_optimizer: torch.optim.Optimizer,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        source_name: str = 'the source run',
) -> List[str]:
    """Give ``model`` and ``optimizer`` the training state that ``source`` and ``source_optimizer`` hold for the
    tensors both models share, matched by name: weights, BN statistics and per-parameter optimizer state (momentum).

    This branches one run off another, e.g. a plain backbone off an RSG run during the CESC phase, where RSG reads
    only detached features and the backbone follows exactly the plain run's trajectory. Every tensor of ``model``
    must exist in ``source`` with the same shape; the source's other tensors are dropped and returned by name.
    """
    if type(source_optimizer) is not type(optimizer):
        raise CheckpointError(f'{source_name} was trained with {type(source_optimizer).__name__}, this run builds '
                              f'{type(optimizer).__name__}: fork with the same --opt')
    source_state, own = source.state_dict(), model.state_dict()
    missing = sorted(k for k in own if k not in source_state)
    mismatched = sorted(k for k in own if k in source_state and source_state[k].shape != own[k].shape)
    if missing or mismatched:
        raise CheckpointError(f'{source_name} lacks {len(missing)} tensors of this model {missing[:3]} and has '
                              f'{len(mismatched)} of other shapes {mismatched[:3]}: fork only into the same backbone')
    model.load_state_dict({k: source_state[k] for k in own})
    source_params = dict(source.named_parameters())
    for name, param in model.named_parameters():
        state = source_optimizer.state.get(source_params[name])
        if state:
            optimizer.state[param] = {k: _state_like(v, param) for k, v in state.items()}
    return sorted(set(source_state) - set(own))


def _state_like(value: Any, param: torch.Tensor) -> Any:
    """A copy of one optimizer-state entry for ``param``: per-element buffers (momentum) on the parameter's device and
    dtype, as the run's model may sit on a GPU while the source was read onto the CPU; scalars such as Adam's
    ``step`` stay as they are."""
    if not torch.is_tensor(value):
        return value
    if value.shape == param.shape:
        return value.to(device=param.device, dtype=param.dtype, copy=True)
    return value.clone()
