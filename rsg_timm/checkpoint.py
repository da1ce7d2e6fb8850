"""Training checkpoints: what they carry beyond timm's (class counts, label names, the backbone to rebuild, RNG
state), writing them so that no kill or full disk loses the last one, and reading them with clear errors.

Only plain Python containers and tensors go into a checkpoint, so ``torch.load(weights_only=True)`` reads it.
"""
import argparse
import logging
import os
import pickle
import shutil
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.models import clean_state_dict, get_model_args
from timm.utils import get_state_dict, unwrap_model

from .compat import CheckpointSaverHooks
from .constants import CLASS_COUNTS_KEY, LABEL_NAMES_KEY
from .models import COSINE_CLASSIFIER_KEY, CheckpointError, CosineHead, model_cosine_head
from .rng import rng_states
from .version import __version__

__all__ = ['CheckpointError', 'RunCheckpointSaver', 'RunState', 'checkpoint_extras', 'find_resume_checkpoint',
           'load_training_checkpoint', 'first_line', 'BEST_CHECKPOINT', 'LAST_CHECKPOINT', 'TMP_CHECKPOINT',
           'VERSION_KEY']

_logger = logging.getLogger(__name__)

# timm's CheckpointSaver names: every save goes to TMP_CHECKPOINT first, then replaces LAST_CHECKPOINT.
LAST_CHECKPOINT = 'last.pth.tar'
TMP_CHECKPOINT = 'tmp.pth.tar'
BEST_CHECKPOINT = 'model_best.pth.tar'
VERSION_KEY = 'rsg_timm_version'


def checkpoint_extras(
        model: nn.Module,
        class_counts: Optional[Sequence[int]],
        label_names: Optional[Sequence[str]],
) -> Dict[str, Any]:
    """The entries rsg_timm adds to a timm training checkpoint."""
    backbone = getattr(model, 'backbone_name', None)
    extras = {
        CLASS_COUNTS_KEY: list(class_counts) if class_counts is not None else None,
        LABEL_NAMES_KEY: list(label_names) if label_names is not None else None,
        'backbone': backbone or model.pretrained_cfg.get('architecture'),
        # rsg_* models know their backbone's kwargs; timm >= 1.0.31 gives a plain model's (get_model_args).
        'backbone_kwargs': dict(getattr(model, 'backbone_kwargs', None) or get_model_args(model)),
        **rng_states(),  # a resumed or forked run draws what the uninterrupted one would have
        VERSION_KEY: __version__,  # a resume under another version lists what resolves differently
    }
    if model_cosine_head(model) is CosineHead.SWAP:  # set after creation, so not in the kwargs
        extras[COSINE_CLASSIFIER_KEY] = True
    return extras


def _checkpoint_epoch(path: str) -> Optional[int]:
    """The epoch a checkpoint file holds, read without loading its tensors; None when it is missing or unreadable."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True, mmap=True).get('epoch')
    except Exception:  # missing, partial or foreign: not the checkpoint sought
        return None


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line, for a one-line error that quotes it."""
    return (str(e).strip().splitlines() or [''])[0][:200]


def load_training_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint file (weights only), naming the file when it is missing, corrupt or not a checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path!r} is empty (0 bytes): it was never written; use another checkpoint')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train checkpoints store their args
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text advises weights_only=False; the point here is the opposite: the file names code to run
        blocked = [line.strip() for line in str(e).splitlines() if 'GLOBAL' in line]
        if 'Weights only load failed' not in str(e) or not blocked:  # e.g. random bytes read as an old-style pickle
            raise CheckpointError(f'cannot read checkpoint {path!r}: it is corrupt or not a PyTorch checkpoint; use '
                                  f'another checkpoint') from None
        raise CheckpointError(
            f'{path!r} was NOT loaded: besides tensors it holds Python objects that would run code when unpickled '
            f'({blocked[0]}). A checkpoint needs none; do not load this file unless you know who made it and '
            f'why.') from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f'cannot read checkpoint {path!r}: it is corrupt or not a PyTorch checkpoint '
                              f'({type(e).__name__}: {first_line(e)})') from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path!r} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    if 'state_dict' not in checkpoint:  # a bare state_dict
        checkpoint = {'state_dict': checkpoint}
    checkpoint['state_dict'] = clean_state_dict(checkpoint['state_dict'])
    return checkpoint


def find_resume_checkpoint(path: str) -> str:
    """The checkpoint ``--resume PATH`` means: a file as given, or a run folder's ``last.pth.tar``.

    A run killed between writing ``tmp.pth.tar`` and moving it into place (timm's saver, before rsg_timm replaced
    ``last.pth.tar`` in one step) may hold only a complete ``tmp.pth.tar``; it is checked and moved into place.
    """
    run_dir = path if os.path.isdir(path) else None
    if run_dir is None and os.path.basename(path) == LAST_CHECKPOINT and not os.path.exists(path):
        run_dir = os.path.dirname(path) or '.'
    if run_dir is None:
        return path
    last, tmp = os.path.join(run_dir, LAST_CHECKPOINT), os.path.join(run_dir, TMP_CHECKPOINT)
    if os.path.isfile(last):
        return last
    if not os.path.isfile(tmp):
        raise FileNotFoundError(f'{run_dir!r} holds no {LAST_CHECKPOINT}: it is not a run folder, or the run stopped '
                                f'before its first checkpoint (start it again: the same --output and --experiment '
                                f'reuse the folder)')
    try:
        load_training_checkpoint(tmp)
    except CheckpointError as e:
        raise CheckpointError(f'{run_dir!r} holds no {LAST_CHECKPOINT}, and its {TMP_CHECKPOINT} is incomplete (the '
                              f'run was killed while writing it): resume from a checkpoint-<epoch>.pth.tar there, '
                              f'or start again. ({e})') from None
    os.replace(tmp, last)
    _logger.warning(f'{last} was missing; recovered it from the complete {TMP_CHECKPOINT} left by an interrupted save')
    return last


class RunState:
    """A run's checkpoint state: the model's and what rsg_timm adds to timm's checkpoints (:func:`checkpoint_extras`);
    handed to ``CheckpointSaver`` as its ``task``."""

    def __init__(self, model: nn.Module, class_counts: Optional[Sequence[int]],
                 label_names: Optional[Sequence[str]]):
        self.model, self.class_counts, self.label_names = model, class_counts, label_names

    def get_checkpoint_state(self, ema: bool = False, unwrap_fn: Callable = unwrap_model) -> Dict[str, Any]:
        if ema:
            return {}
        state = {'state_dict': get_state_dict(self.model, unwrap_fn)}
        state.update(checkpoint_extras(unwrap_fn(self.model), self.class_counts, self.label_names))
        return state


class RunCheckpointSaver(CheckpointSaverHooks):
    """timm's ``CheckpointSaver``, with nothing lost to a kill or a full disk.

    * ``last.pth.tar``, ``model_best.pth.tar`` and ``checkpoint-<epoch>.pth.tar`` are each replaced by one
      ``os.replace`` (timm unlinks the old file first, so a kill in between leaves none);
    * a failed write (a full disk) removes the partial file, keeps the previous checkpoint, and says where and why;
    * :meth:`restore` also redoes the numbered copy and the best-epoch record of the checkpoint it resumes from,
      when a kill came after ``last.pth.tar`` was written but before they were.
    """

    def replace_file(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def duplicate_file(self, src: str, dst: str) -> None:
        partial = dst + '.partial'
        if os.path.exists(partial):
            os.remove(partial)
        try:
            os.link(src, partial)
        except OSError:
            shutil.copy2(src, partial)
        os.replace(partial, dst)

    def write_checkpoint(self, save_path: str, epoch: int, metric: Optional[float] = None) -> None:
        try:
            super().write_checkpoint(save_path, epoch, metric)
        except (OSError, RuntimeError) as e:
            if os.path.exists(save_path):
                os.remove(save_path)
            folder = os.path.dirname(os.path.abspath(save_path))
            free_mb = shutil.disk_usage(folder).free / 2 ** 20
            raise CheckpointError(
                f'could not write the epoch {epoch} checkpoint to {folder} ({free_mb:.0f} MB free: is the disk '
                f'full?); the partial file was removed and the previous {LAST_CHECKPOINT} is kept. Free space, then '
                f'--resume {folder}. ({type(e).__name__}: {first_line(e)})') from e

    def save_checkpoint(self, epoch: int, metric: Optional[float] = None) -> Tuple[Optional[float], Optional[int]]:
        tmp = os.path.join(self.checkpoint_dir, TMP_CHECKPOINT)
        self.write_checkpoint(tmp, epoch, metric)
        self.replace_file(tmp, os.path.join(self.checkpoint_dir, LAST_CHECKPOINT))
        self._retain(epoch, metric)
        return (None, None) if self.best_metric is None else (self.best_metric, self.best_epoch)

    def _retain(self, epoch: int, metric: Optional[float]) -> None:
        """Copy ``last.pth.tar`` to ``checkpoint-<epoch>`` when it earns a place in the history (timm's ranking)."""
        if len(self.checkpoint_files) >= self.max_history:
            worst = self.checkpoint_files[-1][1]
            if worst is not None and (metric is None or not self.cmp(metric, worst)):
                return
            self.discard_worst_checkpoints(1)
        path = self.checkpoint_path(epoch)
        self.duplicate_file(os.path.join(self.checkpoint_dir, LAST_CHECKPOINT), path)
        self.track_checkpoint(path, epoch, metric)

    def restore(self, checkpoint: Dict[str, Any], path: str) -> None:
        """Continue the history and best-epoch record stored in ``checkpoint`` (read from ``path``)."""
        state = checkpoint.get('saver')
        if state is None:
            _logger.warning(f'{path} has no checkpoint history; ranked checkpoints start afresh')
            return
        self.load_state_dict(state)
        epoch, metric = state.get('pending', (None, None))
        resumed_last = os.path.abspath(path) == os.path.abspath(os.path.join(self.checkpoint_dir, LAST_CHECKPOINT))
        if resumed_last and epoch is not None and not os.path.exists(self.checkpoint_path(epoch)):
            self._retain(epoch, metric)
        self._repair_best()

    def _repair_best(self) -> None:
        """Make ``model_best.pth.tar`` hold the recorded best epoch again, when a kill came after the epoch's numbered
        copy but before ``model_best`` was replaced (``--select-on val`` would export an older epoch)."""
        best = os.path.join(self.checkpoint_dir, BEST_CHECKPOINT)
        if self.best_epoch is None or _checkpoint_epoch(best) == self.best_epoch:
            return
        for source in (self.checkpoint_path(self.best_epoch), os.path.join(self.checkpoint_dir, LAST_CHECKPOINT)):
            if _checkpoint_epoch(source) == self.best_epoch:
                self.duplicate_file(source, best)
                _logger.warning(f'{best} did not hold the best epoch {self.best_epoch} (a kill interrupted its '
                                f'update); copied it from {source}')
                return
        _logger.warning(f'{best} does not hold the best epoch {self.best_epoch}, and no checkpoint of that epoch is '
                        f'left to restore it from')
