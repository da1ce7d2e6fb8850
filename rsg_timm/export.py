"""Export a trained model as its plain backbone: ``model.safetensors`` + timm's ``config.json`` in one folder.

RSG only acts during training, so the export is the backbone alone (``cifar_resnet32``, ``resnet50``, ...) and its
``config.json`` names that backbone: an ImageNet-family export loads in plain timm without rsg_timm, while a CIFAR
export needs ``import rsg_timm`` (which registers ``cifar_resnet*``). The folder loads with
``timm.create_model('local-dir:DIR', pretrained=True)`` or, once uploaded, ``'hf-hub:ORG/NAME'``. Training class
counts and label names travel in ``config.json`` (``class_counts``, ``label_names``). A timm ResNet with a cosine
(LDAM) classifier is written with timm's linear ``fc`` (normalised class vectors, zero bias) and
``"cosine_classifier": true``: plain timm predicts the same classes with logits scaled by the feature norm, and
``rsg_timm.eval_model.create_eval_model`` (``validate.py``) restores the cosine logits (``models/classifier.py``
says why). A model trained with LDAM records the factor its loss applied to the cosine logits as ``"logit_scale"``
(``--ldam-s``, else ``losses.LDAM_DEFAULT_S``): ``softmax(logit_scale * cosine logits)`` are the probabilities it
was fitted to.
"""
import copy
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import timm
import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import save_for_hf

from .constants import CLASS_COUNTS_KEY, LABEL_NAMES_KEY, LOGIT_SCALE_KEY, RSG_KEY_PREFIX
from .models import is_rsg_model
from .models.classifier import COSINE_CLASSIFIER_KEY, CosineHead, cosine_to_linear, model_cosine_head, \
    set_cosine_classifier

__all__ = ['strip_rsg', 'save_pretrained', 'load_class_counts']

_logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]


def strip_rsg(model: nn.Module) -> nn.Module:
    """The plain backbone of an RSG model, built by timm under the backbone's name, with the same weights.

    Its eval logits equal the RSG model's. Any other model (already a plain backbone) is returned unchanged.
    """
    if not is_rsg_model(model):
        return model
    backbone = timm.create_model(model.backbone_name, **model.backbone_kwargs)
    if model_cosine_head(model) is CosineHead.SWAP:  # the backbone's entrypoint built a linear head
        set_cosine_classifier(backbone)
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith(RSG_KEY_PREFIX)})
    # Keep the data config the model was trained with; the architecture is now the backbone (the tag named the
    # weights the RSG model started from, which these are not).
    cfg = dict(model.pretrained_cfg, architecture=model.backbone_name)
    cfg.pop('tag', None)
    backbone.pretrained_cfg = backbone.default_cfg = cfg
    return backbone.to(**get_device_dtype(model)).train(model.training)


def _per_class(values: Optional[Sequence[Any]], key: str, num_classes: int) -> Optional[List[Any]]:
    if values is None:
        return None
    values = torch.as_tensor(values).tolist() if key == CLASS_COUNTS_KEY else [str(v) for v in values]
    if len(values) != num_classes:
        raise ValueError(
            f'{key} has {len(values)} entries but the model has {num_classes} classes; pass one entry per class')
    return [int(v) for v in values] if key == CLASS_COUNTS_KEY else values


def save_pretrained(
        model: nn.Module,
        out_dir: Union[str, os.PathLike],
        class_counts: Optional[Sequence[int]] = None,
        label_names: Optional[Sequence[str]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        logit_scale: Optional[float] = None,
) -> Path:
    """Write the plain backbone of ``model`` as ``model.safetensors`` + ``config.json`` into ``out_dir``.

    Each file is written to a temporary name first and moved into place, so a crash never leaves a half-written
    export.

    Args:
        model: an RSG model or a plain timm model.
        out_dir: export folder, created if needed; existing files of the same names are replaced.
        class_counts: training images per class; defaults to the counts given to ``model.set_class_counts``.
        label_names: one name per class.
        data_config: the preprocessing used (as from ``timm.data.resolve_data_config``).
        logit_scale: the factor the training loss applied to the logits (``posthoc.training_logit_scale``), recorded
            when it is not 1.

    Returns:
        The export folder.
    """
    # a copy in the default memory format: safetensors stores contiguous tensors only (channels_last is not)
    backbone = copy.deepcopy(strip_rsg(model)).to(memory_format=torch.contiguous_format)
    if class_counts is None:
        class_counts = getattr(model, 'rsg_class_counts', None)
    model_config = {}
    if model_cosine_head(backbone) is CosineHead.SWAP:
        cosine_to_linear(backbone)  # timm's own head, so plain timm loads it (same argmax, see the module doc)
        model_config[COSINE_CLASSIFIER_KEY] = True
    for key, values in ((CLASS_COUNTS_KEY, class_counts), (LABEL_NAMES_KEY, label_names)):
        values = _per_class(values, key, backbone.num_classes)
        if values is not None:
            model_config[key] = values
    if logit_scale is not None and logit_scale != 1:
        model_config[LOGIT_SCALE_KEY] = float(logit_scale)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix='.tmp-export-') as tmp:
        save_for_hf(backbone, tmp, model_config=model_config, safe_serialization=True, data_config=data_config)
        # safetensors writes its file 0600; every file gets config.json's (umask-based) mode, like the rest of a run
        mode = os.stat(os.path.join(tmp, 'config.json')).st_mode & 0o777
        for name in sorted(os.listdir(tmp)):
            os.chmod(os.path.join(tmp, name), mode)
            os.replace(os.path.join(tmp, name), out_dir / name)
    _logger.info(f'Exported {backbone.pretrained_cfg["architecture"]} to {out_dir}')
    return out_dir


def load_class_counts(source: Union[str, os.PathLike, Dict[str, Any]]) -> Optional[List[int]]:
    """Training class counts stored by :func:`save_pretrained`, or None if the export has none.

    Args:
        source: an export folder, its ``config.json``, or the already loaded config dict.
    """
    if isinstance(source, dict):
        config = source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / 'config.json'
        if not path.is_file():
            raise FileNotFoundError(f'No config.json at {path}: pass an export folder or its config.json')
        config = json.loads(path.read_text())
    counts = config.get(CLASS_COUNTS_KEY)
    return None if counts is None else [int(c) for c in counts]
