"""Continuing training from a checkpoint: the same run (``train.py --resume``) or a new run branched off another's
(``train.py --fork``), e.g. a plain backbone off an rsg_* run before RSG's generation phase.

A resumed run takes back the run's flags and its whole training state (weights, optimizer, AMP scaler, epoch and
random generators), so that it goes on as if it had not stopped; a fork keeps the flags given now and takes the
state of the tensors both models share.
"""
import argparse
import logging
from typing import AbstractSet, Any, Collection, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from .checkpoint import VERSION_KEY, find_resume_checkpoint, load_training_checkpoint
from .constants import CLASS_COUNTS_KEY
from .models import CheckpointError, check_state_dict_fits
from .recipes import create_recipe_model, create_recipe_optimizer
from .rng import restore_rng_states
from .run_folder import run_finished
from .version import __version__

__all__ = ['ResumedRun', 'restore_flags', 'check_class_counts', 'fork_run', 'fork_training_state']

_logger = logging.getLogger(__name__)


def _flag(name: str) -> str:
    return f'--{name.replace("_", "-")}'


def check_class_counts(checkpoint: Dict[str, Any], class_counts: Sequence[int], source: str, verb: str) -> None:
    """A run continues only on the data it was trained on."""
    if checkpoint.get(CLASS_COUNTS_KEY) not in (None, list(class_counts)):
        raise CheckpointError(f'{source} trained on class counts {checkpoint[CLASS_COUNTS_KEY]}, not '
                              f'{class_counts}: {verb} with the same dataset flags')


def restore_flags(args: argparse.Namespace, saved: argparse.Namespace, given: AbstractSet[str],
                  restorable: Collection[str], source: str) -> None:
    """Put the run's flags ``saved`` (those in ``restorable``) back into ``args``, except those ``given`` now (on the
    command line or by ``--config``), and log what was given differently."""
    names = set(restorable)
    stored = {k: v for k, v in vars(saved).items() if k in names}
    overridden = []
    for name, value in stored.items():
        if name not in given:
            setattr(args, name, value)
        elif getattr(args, name) != value:
            overridden.append(f'{_flag(name)} {getattr(args, name)} (the run had {value})')
    _logger.info(f'Restored the run\'s flags from {source}' + (f'; overridden: {", ".join(overridden)}' if overridden
                                                                else ''))


class ResumedRun:
    """The run ``--resume`` continues, read once and restored in the two steps the training script's order needs:
    :meth:`open` puts the run's flags back before the recipe is resolved and the model built, :meth:`restore_state`
    the training state once they are.

    Attributes:
        path: the checkpoint file resumed from.
        checkpoint: its contents (``RunCheckpointSaver.restore`` continues its history from them).
    """

    def __init__(self, path: str, checkpoint: Dict[str, Any], given: AbstractSet[str], restorable: Collection[str]):
        self.path, self.checkpoint = path, checkpoint
        self._given, self._restorable = frozenset(given), tuple(restorable)

    @classmethod
    def open(cls, args: argparse.Namespace, given: AbstractSet[str], restorable: Collection[str]) -> 'ResumedRun':
        """Read the checkpoint ``args.resume`` names (a file, or a run folder's ``last.pth.tar``, which
        ``args.resume`` then names) and restore the run's ``restorable`` flags into ``args``, except those ``given``
        now (on the command line or by ``--config``)."""
        args.resume = find_resume_checkpoint(args.resume)
        run = cls(args.resume, load_training_checkpoint(args.resume), given, restorable)
        saved = run.checkpoint.get('args')
        if isinstance(saved, argparse.Namespace):
            restore_flags(args, saved, run._given, run._restorable, run.path)
        else:
            _logger.warning(f'{run.path} stores no flags: the run continues with the flags given now')
        return run

    def restore_state(self, args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer,
                      loss_scaler: Optional[torch.amp.GradScaler], class_counts: Sequence[int], num_epochs: int,
                      run_dir: str) -> int:
        """Restore model (RSG included), optimizer (unless ``--no-resume-opt``), AMP scaler and random generators, on
        the data the run was trained on; returns the epoch to start from. A run that trained all ``num_epochs`` and
        wrote everything into ``run_dir`` is refused: there is nothing to resume."""
        self._report_recipe_changes(args)
        checkpoint = self.checkpoint
        check_class_counts(checkpoint, class_counts, f'{self.path} was', 'resume')
        check_state_dict_fits(checkpoint['state_dict'], model, self.path)
        start_epoch = int(checkpoint['epoch']) + 1
        if start_epoch >= num_epochs and run_finished(run_dir):  # else its end is completed
            raise ValueError(f'{self.path}: the run finished (epochs 0-{start_epoch - 1} trained of {num_epochs}), so '
                             f'there is nothing to resume; its results are in {run_dir}. To train it longer, pass '
                             f'--epochs greater than {num_epochs}')
        model.load_state_dict(checkpoint['state_dict'])
        if not args.no_resume_opt and 'optimizer' in checkpoint:
            optimizer.load_state_dict(checkpoint['optimizer'])
        if loss_scaler is not None and 'amp_scaler' in checkpoint:
            loss_scaler.load_state_dict(checkpoint['amp_scaler'])
        restore_rng_states(checkpoint, self.path)
        _logger.info(f'Resumed from {self.path} (epoch {checkpoint["epoch"]})')
        return start_epoch

    def _report_recipe_changes(self, args: argparse.Namespace) -> None:
        """Warn of the restorable flags that resolve differently now than in the run and were not given now: a flag
        the run predates, or a default or rule changed between versions, would otherwise change its trajectory
        silently."""
        stored = vars(self.checkpoint.get('args') or argparse.Namespace())
        changed = []
        for name in sorted(set(self._restorable) - self._given):
            flag = f'{_flag(name)} {getattr(args, name)}'
            if name not in stored:
                changed.append(f'{flag} (the run predates the flag)')
            elif stored[name] != getattr(args, name):
                changed.append(f'{flag} (the run had {stored[name]})')
        if changed:
            version = self.checkpoint.get(VERSION_KEY)
            writer = f'rsg_timm {version}' if version else 'an unrecorded version'
            _logger.warning(f'{self.path} was written by {writer}, this is rsg_timm {__version__}; the resumed recipe '
                            f'differs in: {", ".join(changed)}. Pass the run\'s values explicitly to keep them.')


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
    restore_rng_states(checkpoint, f'--fork {path}')
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
