"""Reading a state dict into a model: unwrap training checkpoints, map the official RSG keys onto ours, and check
that the keys and shapes fit before loading, with one error that names the fix.

The official RSG scripts name the classifier ``linear`` (CIFAR) or ``fc_`` (the ImageNet-LT, Places-LT and
iNaturalist cosine heads) where timm has ``fc``. A head stored with a bias is an ``nn.Linear`` (``[out, in]``, as
timm's); one without is LDAM's ``NormedLinear``, whose weight is stored ``[in, out]`` and becomes a cosine head
``[out, in]`` here (:func:`find_official_head` tells a loader which head to build).
"""
from typing import Any, Dict, NamedTuple, Optional

import torch
import torch.nn as nn
from timm.models import clean_state_dict

from ..constants import RSG_KEY_PREFIX

__all__ = ['CheckpointError', 'OfficialHead', 'find_official_head', 'unwrap_checkpoint', 'fill_fresh_rsg',
           'check_state_dict_fits']

# The official code names its RSG module ``RSG``; ours is ``rsg`` (timm's lower-case module names).
_OFFICIAL_RSG_KEY_PREFIX = 'RSG.'
# The official scripts' classifier names, for timm's ``fc``: CIFAR's ``linear``, the ImageNet-family ``fc_``.
_OFFICIAL_HEAD_NAMES = ('linear', 'fc_')
_HEAD = 'fc'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the fix."""


class OfficialHead(NamedTuple):
    """The classifier of an official RSG checkpoint."""
    name: str  # its module name there: 'linear' or 'fc_'
    cosine: bool  # LDAM's NormedLinear (no bias, weight stored [in, out]) rather than an nn.Linear
    num_classes: int


def find_official_head(state_dict: Dict[str, Any]) -> Optional[OfficialHead]:
    """The official-layout classifier of ``state_dict`` (``module.`` already stripped); None when it has timm's ``fc``
    or no classifier.

    Raises:
        CheckpointError: two classifiers, or a classifier weight that is not a matrix.
    """
    names = [n for n in _OFFICIAL_HEAD_NAMES if f'{n}.weight' in state_dict]
    if not names:
        return None
    if len(names) > 1 or f'{_HEAD}.weight' in state_dict:
        raise CheckpointError(f'the checkpoint has more than one classifier ({[*names, _HEAD]} weights); it is not '
                              f'an official RSG checkpoint nor one of ours, so there is no telling which to load')
    name = names[0]
    weight = state_dict[f'{name}.weight']
    if getattr(weight, 'ndim', None) != 2:
        raise CheckpointError(f'the checkpoint\'s classifier {name}.weight has shape '
                              f'{list(getattr(weight, "shape", []))}, not [features, classes]: not an official RSG '
                              f'checkpoint')
    cosine = f'{name}.bias' not in state_dict
    return OfficialHead(name, cosine, int(weight.shape[1] if cosine else weight.shape[0]))


def _map_official_head(state_dict: Dict[str, Any]) -> Dict[str, Any]:
    """``state_dict`` with an official classifier renamed to ``fc`` and a cosine weight transposed to ``[out, in]``."""
    head = find_official_head(state_dict)
    if head is None:
        return state_dict
    out = {}
    for k, v in state_dict.items():
        if k.startswith(head.name + '.'):
            k = _HEAD + k[len(head.name):]
            if head.cosine:
                v = v.t().contiguous()
        out[k] = v
    return out


def _has_rsg_keys(keys) -> bool:
    return any(k.startswith(RSG_KEY_PREFIX) for k in keys)


def unwrap_checkpoint(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """The model weights of a training checkpoint (timm's, ours or the official RSG code's), in our key layout.

    Strips DDP / ``torch.compile`` prefixes, maps the official ``RSG.*`` keys to ``rsg.*`` and the official
    classifier to ``fc`` (see the module doc), and drops RSG keys (either spelling) when ``model`` has no RSG module,
    so a trained RSG checkpoint also loads into the bare backbone.
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
    return _map_official_head(out)


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
