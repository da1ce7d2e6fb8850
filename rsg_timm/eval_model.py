"""Models for evaluation: an ``rsg_*`` or plain arch from a training checkpoint (ours or the official RSG scripts'),
or an exported backbone (``local-dir:`` / ``hf-hub:``), with the class counts and label names it was trained with.

An export's ``config.json`` is checked before its weights are trusted: a class count it disagrees on would leave timm
building a random head.
"""
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import timm
import torch.nn as nn
from safetensors import SafetensorError

from .checkpoint import first_line, load_training_checkpoint
from .constants import CLASS_COUNTS_KEY, LABEL_NAMES_KEY, RSG_KEY_PREFIX
from .models import COSINE_CLASSIFIER_KEY, CheckpointError, backbone_arch, check_rsg_family, check_state_dict_fits, \
    create_cosine_model, fill_fresh_rsg, find_official_head, is_rsg_model, linear_to_cosine, \
    supports_cosine_classifier, unwrap_checkpoint

__all__ = ['create_eval_model', 'read_export_config']

_logger = logging.getLogger(__name__)


def read_export_config(model_name: str, cache_dir: Optional[str] = None) -> Dict[str, Any]:
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
    try:
        with open(path) as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{path!r} is not valid JSON ({e}); re-export the model (rsg_timm.export.'
                              f'save_pretrained) or restore the file') from None
    if not isinstance(config, dict) or not isinstance(config.get('architecture'), str):
        raise CheckpointError(f'{path!r} names no "architecture": it is not a timm export config.json')
    return config


def _check_export_classes(config: Dict[str, Any], model: nn.Module, model_name: str) -> None:
    """Refuse an export whose ``config.json`` disagrees on the class count: timm builds the head from
    ``model_args`` but loads the weights' head only when ``pretrained_cfg`` agrees, else leaves it random."""
    labels = config.get(LABEL_NAMES_KEY)
    counts = {
        'the built model': model.num_classes,
        'num_classes': config.get('num_classes'),
        'model_args.num_classes': (config.get('model_args') or {}).get('num_classes'),
        'pretrained_cfg.num_classes': (config.get('pretrained_cfg') or {}).get('num_classes'),
        CLASS_COUNTS_KEY: None if config.get(CLASS_COUNTS_KEY) is None else len(config[CLASS_COUNTS_KEY]),
        LABEL_NAMES_KEY: None if labels is None else len(labels),
    }
    counts = {k: v for k, v in counts.items() if v is not None}
    if len(set(counts.values())) > 1:
        raise CheckpointError(f'{model_name}: its config.json disagrees on the number of classes ('
                              + ', '.join(f'{k} {v}' for k, v in counts.items())
                              + '), so the classifier would not be the trained one; re-export the model')


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
        checkpoint_path: a training checkpoint (``last.pth.tar``, ``model_best.pth.tar``) or a state_dict file,
            also one saved by the official RSG scripts (its classifier gives the class count and, without a bias,
            the cosine head). An ``rsg_*`` checkpoint loads into its plain backbone too (the RSG keys are dropped).
        pretrained: load the arch's pretrained weights (implied for ``local-dir:`` / ``hf-hub:``).
        num_classes: head size when it is not known from the checkpoint or export.
        kwargs: further ``timm.create_model`` arguments.

    Returns:
        ``(model, class_counts, label_names)``; the last two are ``None`` when the source does not carry them.
    """
    if model_name.startswith(('local-dir:', 'hf-hub:')):
        config = read_export_config(model_name, cache_dir=kwargs.get('cache_dir'))
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except (RuntimeError, SafetensorError) as e:
            # the weights file is unreadable or does not fit the architecture that config.json names
            raise CheckpointError(f'{model_name}: its model.safetensors does not load as the {config["architecture"]} '
                                  f'its config.json names ({type(e).__name__}: {first_line(e)}); re-export '
                                  f'the model') from None
        except TypeError as e:  # config.json's model_args belong to another architecture
            raise CheckpointError(f'{model_name}: its config.json does not fit {config["architecture"]} '
                                  f'({first_line(e)}); re-export the model') from None
        _check_export_classes(config, model, model_name)
        if config.get(COSINE_CLASSIFIER_KEY):
            linear_to_cosine(model)  # the export's linear fc stands for a cosine head: restore its logits
        return model, config.get(CLASS_COUNTS_KEY), config.get(LABEL_NAMES_KEY)

    check_rsg_family(model_name)
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
    official = find_official_head(checkpoint['state_dict'])  # a file of the official RSG scripts: the head says
    if official is not None:                                  # the class count and whether it is cosine
        if num_classes is not None and num_classes != official.num_classes:
            raise ValueError(f'--num-classes {num_classes} but the classifier of {checkpoint_path!r} has '
                             f'{official.num_classes} classes')
        create_kwargs['num_classes'] = official.num_classes
    if num_classes is not None:
        create_kwargs['num_classes'] = num_classes
    cosine = checkpoint.get(COSINE_CLASSIFIER_KEY) or (official is not None and official.cosine)
    if cosine and not supports_cosine_classifier(model_name):
        raise CheckpointError(f'{checkpoint_path!r} has a cosine (LDAM) classifier, which only CIFAR and timm '
                              f'ResNet-family models take, not {model_name}; pass --model with the architecture it '
                              f'was trained with (e.g. cifar_resnet32, resnext50_32x4d, resnet152)')
    model = (create_cosine_model if cosine else timm.create_model)(model_name, **create_kwargs)
    state_dict = unwrap_checkpoint(checkpoint['state_dict'], model)  # an rsg_* run's also loads as its backbone
    if is_rsg_model(model) and not any(k.startswith(RSG_KEY_PREFIX) for k in state_dict):
        _logger.info(f'{checkpoint_path} holds no RSG weights; {model_name} gets a fresh RSG (unused in evaluation)')
        state_dict = fill_fresh_rsg(state_dict, model)
    check_state_dict_fits(state_dict, model, repr(checkpoint_path))
    model.load_state_dict(state_dict)
    return model, checkpoint.get(CLASS_COUNTS_KEY), checkpoint.get(LABEL_NAMES_KEY)
