"""Post-hoc corrections of a model trained with plain CE: logit adjustment and tau-normalisation.

* Post-hoc logit adjustment (Menon et al., ICLR 2021; google-research ``logit_adjustment``): predict with
  ``z_j - log(pi_j^tau + 1e-12)``, ``pi_j = n_j / N``. Do not combine with a loss that already adds the
  prior (``balanced_softmax``, ``logit_adjusted``).
* tau-normalisation (Kang et al., ICLR 2020, "Decoupling"): replace each class weight vector by
  ``w_j / ||w_j||^tau`` and drop the bias; ``tau=0`` keeps the weights, ``tau=1`` fully normalises.

Logit adjustment acts on the logits the model was *trained* with. A model trained with LDAM saw ``s * z`` (its cosine
head gives ``z`` in [-1, 1]; ``s`` is ``losses.LDAM_DEFAULT_S`` unless set); subtracting log-priors of order 1-5 from
the raw ``z`` swamps them and drops a CIFAR-10-LT model to chance, so :func:`training_logit_scale` recovers ``s`` from
the training arguments and ``logit_adjust(..., scale=s)`` applies it first.

Choose ``tau`` on a validation split, never on the test list.
"""
import copy
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from .losses import LDAM_DEFAULT_S, ClassCounts, log_prior

__all__ = ['logit_adjust', 'training_logit_scale', 'has_nonlinear_classifier', 'tau_normalize_classifier',
           'tau_normalize']

_Classifier = Union[nn.Linear, nn.Conv2d]


def logit_adjust(
        logits: torch.Tensor,
        class_counts: ClassCounts,
        tau: float = 1.0,
        scale: float = 1.0,
) -> torch.Tensor:
    """``scale * logits - log(prior^tau)`` for ``logits [B, C]`` (float32 result, on the logits' device).

    Args:
        scale: the factor the training loss applied to the model's logits (LDAM's ``s``; 1 for CE and the like).
    """
    prior = log_prior(class_counts, tau)
    if prior.numel() != logits.shape[-1]:
        raise ValueError(f'{prior.numel()} class counts but logits have {logits.shape[-1]} classes.')
    return scale * logits.float() - prior.to(logits.device, non_blocking=True)


def training_logit_scale(train_args: Mapping[str, Any]) -> Optional[float]:
    """The factor the training loss applied to the logits, from a run's arguments (``args.yaml`` / checkpoint args).

    LDAM multiplies by ``ldam_s`` (the loss's default when unset); every other loss sees the logits as they are.
    ``None`` when the arguments do not name the loss.
    """
    loss = train_args.get('loss')
    if loss is None:
        return None
    if loss != 'ldam':
        return 1.0
    s = train_args.get('ldam_s')
    return float(s if s is not None else LDAM_DEFAULT_S)


def _is_plain_classifier(module: nn.Module) -> bool:
    """A linear map ``W x + b``: nn.Linear or a 1x1 nn.Conv2d head, without an overridden forward."""
    if isinstance(module, nn.Linear):
        return type(module).forward is nn.Linear.forward
    return (
        isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward
        and module.kernel_size == (1, 1) and module.groups == 1
    )


def has_nonlinear_classifier(model: nn.Module) -> bool:
    """Whether the classifier of a timm-style model is not a plain linear map (e.g. LDAM's cosine head), so its
    logits lie in [-1, 1] and need the training scale before any prior is subtracted."""
    classifier = model.get_classifier() if hasattr(model, 'get_classifier') else None
    return isinstance(classifier, nn.Module) and not isinstance(classifier, nn.Identity) \
        and not _is_plain_classifier(classifier)


def tau_normalize_classifier(classifier: _Classifier, tau: float = 1.0) -> _Classifier:
    """A bias-free copy of a linear classifier with rows ``w_j / ||w_j||_2^tau``.

    Raises:
        ValueError: for anything but a plain nn.Linear or 1x1 nn.Conv2d, e.g. a cosine / normed classifier.
    """
    if not _is_plain_classifier(classifier):
        raise ValueError(
            f'tau-normalisation rescales the class rows of a plain nn.Linear (or 1x1 nn.Conv2d) classifier, '
            f'got {type(classifier).__name__}. A cosine / normed classifier (e.g. the one LDAM uses) already '
            'normalises its rows at every forward, so tau-norm does not apply; try logit_adjust instead.')
    weight = classifier.weight.detach()
    norms = weight.flatten(1).norm(dim=1).clamp_min(1e-12)  # [C]
    shape = (-1,) + (1,) * (weight.dim() - 1)
    new = copy.deepcopy(classifier)
    new.bias = None  # drops the parameter; nn.Linear / nn.Conv2d forward accept a missing bias
    with torch.no_grad():
        new.weight.copy_(weight / norms.pow(tau).view(shape))
    return new


def tau_normalize(model: nn.Module, tau: float = 1.0) -> nn.Module:
    """A copy of a timm-style model (``get_classifier()``) whose classifier is tau-normalised.

    The input model is left untouched.
    """
    if not hasattr(model, 'get_classifier'):
        raise ValueError(f'{type(model).__name__} has no get_classifier(); pass a timm model or use '
                         'tau_normalize_classifier on its final layer.')
    new_model = copy.deepcopy(model)
    classifier = new_model.get_classifier()
    if not isinstance(classifier, nn.Module):
        raise ValueError(f'get_classifier() returned {type(classifier).__name__}; tau-norm needs a single layer.')
    path = next((name for name, mod in new_model.named_modules() if mod is classifier), None)
    if not path:
        raise ValueError(f'The classifier of {type(model).__name__} is not a submodule; cannot replace it.')
    parent_path, _, leaf = path.rpartition('.')
    setattr(new_model.get_submodule(parent_path), leaf, tau_normalize_classifier(classifier, tau))
    return new_model
