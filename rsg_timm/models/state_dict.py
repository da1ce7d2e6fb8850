"""Reading a state dict into a model: unwrap training checkpoints, map the official RSG keys onto ours, and check
that the keys and shapes fit before loading, with one error that names the fix.

Hacked together for rsg_timm; Apache-2.0.
"""
from typing import Any, Dict

import torch
import torch.nn as nn
from timm.models import clean_state_dict

from ..constants import RSG_KEY_PREFIX

__all__ = ['CheckpointError', 'unwrap_checkpoint', 'fill_fresh_rsg', 'check_state_dict_fits']

# The official code names its RSG module ``RSG``; ours is ``rsg`` (timm's lower-case module names).
_OFFICIAL_RSG_KEY_PREFIX = 'RSG.'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the fix."""


def _has_rsg_keys(keys) -> bool:
    return any(k.startswith(RSG_KEY_PREFIX) for k in keys)


def unwrap_checkpoint(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """The model weights of a training checkpoint (timm's, ours or the official RSG code's), in our key layout.

    Strips DDP / ``torch.compile`` prefixes, maps the official ``RSG.*`` keys to ``rsg.*``, and drops RSG keys
    (either spelling) when ``model`` has no RSG module, so a trained RSG checkpoint also loads into the bare backbone.
    """
    for key in ('state_dict', 'model'):  # official RSG / timm training checkpoints
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
    keep_rsg = _has_rsg_keys(model.state_dict())
    out = {}
    for k, v in clean_state_dict(state_dict).items():
        if k.startswith((_OFFICIAL_RSG_KEY_PREFIX, RSG_KEY_PREFIX)):
            if not keep_rsg:
                continue
            k = RSG_KEY_PREFIX + k.split('.', 1)[1]
        out[k] = v
    return out


def fill_fresh_rsg(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """``state_dict`` with the model's own (fresh) RSG values where it has none: a backbone's weights start an RSG
    model."""
    for k, v in model.state_dict().items():
        if k.startswith(RSG_KEY_PREFIX):
            state_dict.setdefault(k, v)
    return state_dict


def check_state_dict_fits(state_dict: Dict[str, torch.Tensor], model: nn.Module, source: str,
                          pretrained_filter: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys, with the same shapes.

    ``num_batches_tracked`` is not compared (BatchNorm fills it in). ``pretrained_filter``: the check of a timm
    pretrained filter, which compares the backbone's keys only: a fresh RSG fills missing ``rsg.*`` keys, and timm
    itself drops a classifier of another class count after the filter.
    """
    def compared(keys):
        return {k for k in keys if not k.endswith('num_batches_tracked')
                and not (pretrained_filter and k.startswith(RSG_KEY_PREFIX))}
    own = model.state_dict()
    missing, unexpected = sorted(compared(own) - compared(state_dict)), sorted(compared(state_dict) - compared(own))
    reshaped = [] if pretrained_filter else sorted(
        k for k in compared(own) & compared(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or reshaped:
        arch = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
        raise CheckpointError(
            f'{source} does not fit {arch}: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected '
            f'{unexpected[:3]}, {len(reshaped)} with other shapes {reshaped[:3]}. Is it a checkpoint of another '
            f'architecture or class count? Create the model it was trained with (its config.json "architecture" or '
            f'its training args, e.g. --model and --num-classes).')
