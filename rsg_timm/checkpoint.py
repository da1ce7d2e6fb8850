"""Training checkpoints: what they carry beyond timm's (class counts, label names, the backbone to rebuild, RNG
state), reading them with clear errors, and building an evaluation model from a checkpoint or an export.

Only plain Python containers and tensors go into a checkpoint, so ``torch.load(weights_only=True)`` reads it.
"""
import argparse
import json
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.models.resnet import ResNet

from .constants import CLASS_COUNTS_KEY, LABEL_NAMES_KEY, RSG_KEY_PREFIX
from .models import COSINE_CLASSIFIER_KEY, backbone_arch, has_cosine_classifier, is_rsg_model, linear_to_cosine, \
    set_cosine_classifier

__all__ = ['CheckpointError', 'checkpoint_extras', 'load_training_checkpoint', 'fork_training_state',
           'create_eval_model']

_logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model; the message names the fix."""


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
        # rsg_* models know their backbone's kwargs; timm >= 1.0.31 records a plain model's create_model kwargs.
        'backbone_kwargs': dict(getattr(model, 'backbone_kwargs', None)
                                or dict(getattr(model, '_model_args', {}), num_classes=model.num_classes)),
        'rng_state': torch.get_rng_state(),
    }
    if isinstance(model, ResNet) and has_cosine_classifier(model):  # set after creation, so not in the kwargs
        extras[COSINE_CLASSIFIER_KEY] = True
    return extras


def load_training_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint file (weights only), naming the file when it is missing, corrupt or not a checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train checkpoints store their args
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f'cannot read checkpoint {path!r}: it is corrupt or not a PyTorch checkpoint '
                              f'({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})') from e
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{path!r} holds a {type(checkpoint).__name__}, not a checkpoint dict')
    if 'state_dict' not in checkpoint:  # a bare state_dict
        checkpoint = {'state_dict': checkpoint}
    checkpoint['state_dict'] = clean_state_dict(checkpoint['state_dict'])
    return checkpoint


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
            optimizer.state[param] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
    return sorted(set(source_state) - set(own))


def _read_export_config(model_name: str, cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """``config.json`` of a ``local-dir:`` or ``hf-hub:`` model (from the Hub cache ``cache_dir`` when offline)."""
    if model_name.startswith('local-dir:'):
        path = os.path.join(model_name[len('local-dir:'):], 'config.json')
    else:
        from huggingface_hub import hf_hub_download
        repo_id = model_name.split(':', 1)[1]
        revision = None
        if '@' in repo_id:
            repo_id, revision = repo_id.split('@', 1)
        path = hf_hub_download(repo_id, 'config.json', revision=revision, cache_dir=cache_dir)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{model_name}: no config.json at {path!r}; is this an exported model folder?')
    with open(path) as f:
        return json.load(f)


def _load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str, arch: str) -> None:
    """Load ``state_dict`` strictly, dropping RSG keys when ``model`` has no RSG, with an error naming the mismatch."""
    if not is_rsg_model(model):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(RSG_KEY_PREFIX)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f'{source} does not fit {arch}: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected '
            f'{unexpected[:3]}, {len(mismatched)} with other shapes {mismatched[:3]}. Is it a checkpoint of another '
            f'architecture or class count? Pass the --model it was trained with.')
    model.load_state_dict(state_dict)


def create_eval_model(
        model_name: str,
        checkpoint_path: str = '',
        pretrained: bool = False,
        num_classes: Optional[int] = None,
        **kwargs,
) -> Tuple[nn.Module, Optional[List[int]], Optional[List[str]]]:
    """Build a model for evaluation and report the training class counts and label names it carries.

    Args:
        model_name: a registered arch (``cifar_resnet32``, ``rsg_resnet32``, ``resnet50.a1_in1k``), or an exported
            backbone as ``local-dir:DIR`` / ``hf-hub:ORG/NAME``.
        checkpoint_path: a training checkpoint (``last.pth.tar``, ``model_best.pth.tar``) or a state_dict file.
            An ``rsg_*`` checkpoint loads into its plain backbone too (the RSG keys are dropped).
        pretrained: load the arch's pretrained weights (implied for ``local-dir:`` / ``hf-hub:``).
        num_classes: head size when it is not known from the checkpoint or export.
        kwargs: further ``timm.create_model`` arguments.

    Returns:
        ``(model, class_counts, label_names)``; the last two are ``None`` when the source does not carry them.
    """
    if model_name.startswith(('local-dir:', 'hf-hub:')):
        config = _read_export_config(model_name, cache_dir=kwargs.get('cache_dir'))
        model = timm.create_model(model_name, pretrained=True, **kwargs)
        if config.get(COSINE_CLASSIFIER_KEY):
            linear_to_cosine(model)  # the export's linear fc stands for a cosine head: restore its logits
        return model, config.get(CLASS_COUNTS_KEY), config.get(LABEL_NAMES_KEY) or config.get('label_names')

    if not checkpoint_path:
        create_kwargs = dict(kwargs, num_classes=num_classes) if num_classes is not None else kwargs
        return timm.create_model(model_name, pretrained=pretrained, **create_kwargs), None, None

    checkpoint = load_training_checkpoint(checkpoint_path)
    saved_kwargs = dict(checkpoint.get('backbone_kwargs') or {})
    if num_classes is not None and saved_kwargs.get('num_classes', num_classes) != num_classes:
        raise ValueError(f'--num-classes {num_classes} but {checkpoint_path!r} was trained with '
                         f'{saved_kwargs["num_classes"]} classes')
    backbone, model_backbone = checkpoint.get('backbone'), backbone_arch(model_name)
    if backbone and backbone != model_backbone:
        raise CheckpointError(f'{checkpoint_path!r} is a checkpoint of {backbone}, not {model_backbone}; '
                           f'pass --model {backbone} (or rsg_<arch> of it)')
    create_kwargs = dict(saved_kwargs, **kwargs)
    if num_classes is not None:
        create_kwargs['num_classes'] = num_classes
    model = timm.create_model(model_name, **create_kwargs)
    if checkpoint.get(COSINE_CLASSIFIER_KEY):
        set_cosine_classifier(model)
    _load_weights(model, checkpoint['state_dict'], repr(checkpoint_path), model_name)
    return model, checkpoint.get(CLASS_COUNTS_KEY), checkpoint.get(LABEL_NAMES_KEY)
