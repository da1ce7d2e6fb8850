"""The cosine classifier (LDAM's ``NormedLinear``) on timm ResNet-family models, and its plain-timm export form.

LDAM-DRW and the official RSG ImageNet-LT / Places-LT / iNaturalist scripts train LDAM on a cosine head:
``logits = normalize(x) @ normalize(W).T``, no bias. The CIFAR ResNets build it themselves (``use_norm=True``);
for timm's ``ResNet`` (resnet*, resnext*, seresnext*, wide_resnet*, ... and every ``rsg_*`` of them)
:func:`set_cosine_classifier` swaps ``fc`` for one after the model is built, since timm's entrypoints take no such
argument.

Export: a plain timm ``ResNet`` has a linear ``fc``. :func:`cosine_to_linear` writes the cosine head as that linear
layer with the class vectors normalised and a zero bias, so the export loads in plain timm. Its logits are then
``||x|| * cos(x, w_c)``: the cosine logits times the norm of the pooled feature, one positive factor per image.
The predicted class (argmax), the ranking of classes and top-k are unchanged; softmax probabilities are sharper or
flatter per image (the factor acts as an inverse temperature), so calibration numbers (ECE) differ. With rsg_timm
installed, :func:`linear_to_cosine` restores the cosine head from that export, giving the trained model's logits
(up to float rounding of the already normalised weights).
"""
import enum
from typing import Optional

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_device_dtype
from timm.models import is_model
from timm.models.resnet import ResNet

from ..compat import entrypoint_model_class
from .cifar_resnet import CifarResNet, NormedLinear
from .rsg_model import backbone_arch

__all__ = ['COSINE_CLASSIFIER_KEY', 'CosineHead', 'arch_cosine_head', 'model_cosine_head', 'supports_cosine_classifier',
           'has_cosine_classifier', 'set_cosine_classifier', 'create_cosine_model', 'cosine_to_linear',
           'linear_to_cosine']

# config.json / checkpoint key saying that the linear fc of an export stands for a cosine classifier.
COSINE_CLASSIFIER_KEY = 'cosine_classifier'


class CosineHead(enum.Enum):
    """How a model gets its cosine head, so that a saved one can be rebuilt."""
    USE_NORM = 'use_norm'  # the architecture builds it: create_model(..., use_norm=True) (the CIFAR ResNets)
    SWAP = 'swap'  # timm's entrypoints take no such option: set_cosine_classifier after create_model (timm ResNet)


def _cosine_head_of_class(cls: type) -> Optional[CosineHead]:
    """The one rule: which model classes take a cosine head, and how."""
    if issubclass(cls, CifarResNet):
        return CosineHead.USE_NORM
    if issubclass(cls, ResNet):
        return CosineHead.SWAP
    return None


def arch_cosine_head(model_name: str) -> Optional[CosineHead]:
    """How ``model_name`` (plain or ``rsg_*``, tag allowed) builds a cosine head; ``None`` when it cannot take one
    (or timm does not know the name, which ``timm.create_model`` then reports). Read from the entrypoint's return
    annotation, so no model is built."""
    arch = backbone_arch(model_name)
    built = entrypoint_model_class(arch) if is_model(arch) else None
    return _cosine_head_of_class(built) if built is not None else None


def model_cosine_head(model: nn.Module) -> Optional[CosineHead]:
    """How the cosine head of ``model`` (plain or ``rsg_*``) is rebuilt; ``None`` when its classifier is not one."""
    return _cosine_head_of_class(type(model)) if has_cosine_classifier(model) else None


def supports_cosine_classifier(model_name: str) -> bool:
    """Whether ``model_name`` (plain or ``rsg_*``, tag allowed) builds a CIFAR ResNet or a timm ``ResNet``."""
    return arch_cosine_head(model_name) is not None


def create_cosine_model(model_name: str, **kwargs) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)`` with a cosine classifier: a CIFAR ResNet builds its own
    (``use_norm=True``), a timm ``ResNet`` gets one swapped in (:func:`set_cosine_classifier`)."""
    if arch_cosine_head(model_name) is CosineHead.USE_NORM:
        return timm.create_model(model_name, **dict(kwargs, use_norm=True))
    return set_cosine_classifier(timm.create_model(model_name, **kwargs))


def has_cosine_classifier(model: nn.Module) -> bool:
    """Whether the model's classifier is a cosine ``NormedLinear``."""
    return isinstance(model.get_classifier(), NormedLinear)


def _check_resnet(model: nn.Module) -> None:
    kind = _cosine_head_of_class(type(model))
    if kind is CosineHead.USE_NORM:
        raise TypeError('CIFAR ResNets build their cosine head themselves: create the model with use_norm=True')
    if kind is not CosineHead.SWAP:
        raise TypeError(f'the cosine classifier swap supports timm ResNet-family models, not {type(model).__name__}')
    if not isinstance(model.fc, (nn.Linear, NormedLinear)):
        raise ValueError('the model has no classifier (num_classes=0): nothing to make cosine')


def set_cosine_classifier(model: nn.Module, weight: Optional[torch.Tensor] = None) -> nn.Module:
    """Replace a timm ResNet's ``fc`` by a cosine ``NormedLinear`` in place; returns the model.

    Args:
        model: a timm ``ResNet`` (or ``rsg_*`` of one) with a classifier.
        weight: class vectors ``[num_classes, num_features]`` to start from; LDAM's init when ``None``.
    """
    _check_resnet(model)
    if isinstance(model.fc, NormedLinear) and weight is None:
        return model
    head = NormedLinear(model.fc.in_features, model.fc.out_features, **get_device_dtype(model.fc))
    if weight is not None:
        with torch.no_grad():
            head.weight.copy_(weight)
    head.train(model.fc.training)
    model.fc = head
    return model


def cosine_to_linear(model: nn.Module) -> nn.Module:
    """Replace a cosine ``fc`` by timm's ``nn.Linear`` with normalised class vectors and a zero bias, in place.

    The result is an ordinary timm model whose logits are the cosine logits times ``||x||`` (see the module doc).
    """
    _check_resnet(model)
    head = model.fc
    if not isinstance(head, NormedLinear):
        return model
    linear = nn.Linear(head.in_features, head.out_features, **get_device_dtype(head))
    with torch.no_grad():
        linear.weight.copy_(F.normalize(head.weight, dim=1))
        linear.bias.zero_()
    linear.train(head.training)
    model.fc = linear
    return model


def linear_to_cosine(model: nn.Module) -> nn.Module:
    """Undo :func:`cosine_to_linear` in place: a cosine ``fc`` with the linear layer's (normalised) class vectors.

    Raises:
        ValueError: when the linear layer has a non-zero bias, i.e. it was not written by :func:`cosine_to_linear`.
    """
    _check_resnet(model)
    head = model.fc
    if isinstance(head, NormedLinear):
        return model
    if head.bias is not None and bool(head.bias.detach().abs().max() > 0):
        raise ValueError('this fc has a non-zero bias, so it is not an exported cosine classifier; '
                         'load it without the cosine_classifier flag')
    return set_cosine_classifier(model, weight=head.weight.detach())
