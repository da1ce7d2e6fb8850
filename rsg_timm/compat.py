"""Every use of timm's and torch's private API in rsg_timm, in one place, with why each is needed.

Written for timm 1.0.31 and torch 2.x. A new timm or torch that renames or changes one of these breaks this module
only (``tests/test_timm_contracts.py`` and ``tests/test_compat.py`` say which item), and
``tests/test_compat.py::test_no_private_api_outside_compat`` keeps the rest of the package on public API.

* :class:`CheckpointSaverHooks`: timm's ``CheckpointSaver`` writes, replaces and copies checkpoint files through
  the private hooks ``_save``, ``_replace`` and ``_duplicate``, and keeps its history with ``_checkpoint_path``,
  ``_cleanup_checkpoints`` and ``_track_checkpoint``. rsg_timm makes every file update atomic and reports a full
  disk, which needs those hooks; the subclass gives them public names.
* :func:`feature_take_indices`: timm's rule for ``forward_intermediates``' ``indices`` (negative, an int for the
  last n, the largest index needed), which the CIFAR ResNets follow to behave as timm's models do; timm 1.0.31 has
  it in ``timm.models._features`` only.
* :func:`regnet_filter_fn`: timm's conversion of pycls RegNet weights, applied to the backbone weights an
  ``rsg_regnet*`` loads; timm keeps it private in ``timm.models.regnet``.
* :func:`assert_on_device`: ``torch._assert_async`` checks the labels on their device without a host sync.
* :func:`switch_class`: an RSG model is the backbone timm's entrypoint built, with its class switched to a subclass
  that adds RSG; that is only sound while the subclass adds methods and no state the backbone's ``__init__`` sets.
* :func:`entrypoint_model_class`: which model class an entrypoint builds, read from its return annotation (timm's
  convention; no model is built), plus the entrypoints timm 1.0.31 leaves unannotated, checked by
  ``tests/test_compat.py`` on the meta device.
"""
import inspect
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from timm.models import model_entrypoint
from timm.models._features import feature_take_indices
from timm.models.regnet import _filter_fn
from timm.models.resnet import ResNet
from timm.utils import CheckpointSaver

__all__ = ['CheckpointSaverHooks', 'feature_take_indices', 'regnet_filter_fn', 'assert_on_device', 'switch_class',
           'entrypoint_model_class', 'UNANNOTATED_ENTRYPOINTS']


class CheckpointSaverHooks(CheckpointSaver):
    """timm's ``CheckpointSaver`` whose private hooks call public methods: a subclass overrides
    :meth:`write_checkpoint`, :meth:`replace_file` and :meth:`duplicate_file` (each defaults to timm's own) and
    keeps the history with :meth:`checkpoint_path`, :meth:`discard_worst_checkpoints` and
    :meth:`track_checkpoint`."""

    def _save(self, save_path: str, epoch: int, metric: Optional[float] = None) -> None:
        self.write_checkpoint(save_path, epoch, metric)

    def _replace(self, src: str, dst: str) -> None:
        self.replace_file(src, dst)

    def _duplicate(self, src: str, dst: str) -> None:
        self.duplicate_file(src, dst)

    def write_checkpoint(self, save_path: str, epoch: int, metric: Optional[float] = None) -> None:
        """Write the state of ``epoch`` to ``save_path`` (timm's checkpoint contents)."""
        super()._save(save_path, epoch, metric)

    def replace_file(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst``."""
        super()._replace(src, dst)

    def duplicate_file(self, src: str, dst: str) -> None:
        """Make ``dst`` a copy (or hard link) of ``src``."""
        super()._duplicate(src, dst)

    def checkpoint_path(self, epoch: int) -> str:
        """The numbered checkpoint file of ``epoch``."""
        return self._checkpoint_path(epoch)

    def discard_worst_checkpoints(self, trim: int) -> None:
        """Delete the lowest-ranked numbered checkpoints so that ``trim`` new ones fit the history."""
        self._cleanup_checkpoints(trim)

    def track_checkpoint(self, path: str, epoch: int, metric: Optional[float] = None) -> None:
        """Rank a numbered checkpoint in the history; a new best metric also replaces ``model_best``."""
        self._track_checkpoint(path, epoch, metric)


def regnet_filter_fn(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """timm's filter that maps pycls RegNet weights to timm's names."""
    return _filter_fn(state_dict)


def assert_on_device(condition: torch.Tensor, message: str) -> None:
    """Fail when the boolean scalar ``condition`` is false, checked on its device without a host sync (CPU and
    CUDA; CUDA reports a failure later as a device-side assert, CPU raises ``RuntimeError`` here)."""
    torch._assert_async(condition, message)


def switch_class(model: nn.Module, cls: type) -> nn.Module:
    """Make ``model`` an instance of ``cls``, a subclass of its own class that adds methods only; returns it."""
    if type(model) not in cls.__mro__:
        raise TypeError(f'{cls.__name__} does not subclass {type(model).__name__}')
    model.__class__ = cls
    return model


# Entrypoints of timm 1.0.31 that build a family RSG wraps but declare no return annotation.
UNANNOTATED_ENTRYPOINTS: Dict[str, type] = {'seresnextaa201d_32x8d': ResNet}


def entrypoint_model_class(arch: str) -> Optional[type]:
    """The model class the entrypoint of ``arch`` builds, without building it; ``None`` when it does not say."""
    if arch in UNANNOTATED_ENTRYPOINTS:
        return UNANNOTATED_ENTRYPOINTS[arch]
    built = inspect.signature(model_entrypoint(arch)).return_annotation
    if built is inspect.Signature.empty or not isinstance(built, type):  # missing, or a string (postponed)
        return None
    return built
