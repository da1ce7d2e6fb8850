"""The long-tail recipe rules: the flags a run leaves unset, resolved the way the RSG and LDAM-DRW papers train, and
the model, optimizer and learning-rate schedule that the resolved flags describe.

``train.py`` parses flags; this module decides what they mean, so that ``benchmarks/reproduce.py`` and the tests
apply the same rules. The epoch milestones are those of the official RSG CIFAR-LT code, as shares of its 200
epochs: the learning rate x0.01 from 0-based epoch 159 and x1e-4 from 179, DRW from 160, RSG's generation after
159. timm's multistep scheduler applies milestone ``m`` from epoch ``m - 1``, hence the milestones 160 / 180.
"""
import argparse
import difflib
import logging
import os
from typing import Any, Dict, List, Sequence, Tuple

import timm
import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

from .checkpoint import load_training_checkpoint
from .losses import LDAM_DEFAULT_S
from .models import CosineHead, arch_cosine_head, backbone_arch, backbone_stage_names, check_rsg_family, \
    check_state_dict_fits, fill_fresh_rsg, is_rsg_model, set_cosine_classifier, unwrap_checkpoint
from .train_flags import RSG_FLAGS

__all__ = ['LATE_PHASE', 'LAST_DECAY', 'EPOCH_SWITCHES', 'scaled_schedule', 'rescale_schedule',
           'phases_out_of_reach', 'resolve_recipe', 'create_recipe_model', 'create_recipe_optimizer',
           'create_lr_scheduler']

_logger = logging.getLogger(__name__)

# Where the late phase starts (LR decay, DRW, deferred re-sampling, RSG's generation) and the last LR decay, as
# shares of the run.
LATE_PHASE, LAST_DECAY = 0.8, 0.9
# The flags that switch a run from one phase to the next, in epochs: written for one run length.
EPOCH_SWITCHES = ('decay_milestones', 'drw_epoch', 'drs_epoch', 'rsg_epoch_thresh')


def scaled_schedule(epochs: int) -> Dict[str, Any]:
    """The RSG CIFAR recipe's epoch milestones scaled to ``epochs``: ``decay_milestones`` (timm's convention),
    ``drw_epoch`` and ``drs_epoch`` (the first late epoch), ``rsg_epoch_thresh`` (the last epoch before it)."""
    late = int(LATE_PHASE * epochs)
    return dict(decay_milestones=[late, int(LAST_DECAY * epochs)], drw_epoch=late, drs_epoch=late,
                rsg_epoch_thresh=max(late - 1, 0))


def rescale_schedule(switches: Dict[str, Any], epochs: int, new_epochs: int) -> Dict[str, Any]:
    """Epoch switches (:data:`EPOCH_SWITCHES`) written for an ``epochs``-long run, at the same shares of a
    ``new_epochs``-long one, rounded down as :func:`scaled_schedule` rounds: a switch at epoch ``e`` moves to
    ``e * new_epochs // epochs``, and ``rsg_epoch_thresh`` stays the epoch before generation starts. The CIFAR
    recipes' switches (80% and 90% of 200) land where the defaults of ``--epochs new_epochs`` put them."""
    def scale(epoch: int) -> int:
        return epoch * new_epochs // epochs

    scaled = {}
    for name, value in switches.items():
        if value is None or (name == 'rsg_epoch_thresh' and value < 0):  # unset, or generation from the start
            scaled[name] = value
        elif name == 'decay_milestones':
            scaled[name] = [scale(m) for m in value]
        elif name == 'rsg_epoch_thresh':
            scaled[name] = max(scale(value + 1) - 1, 0)
        else:
            scaled[name] = scale(value)
    return scaled


def phases_out_of_reach(args: argparse.Namespace) -> List[str]:
    """The late phases a resolved run enables but never reaches: RSG's generation, DRW, deferred re-sampling."""
    starts = []
    if is_rsg_model(args.model):
        starts.append(('RSG generation', 'rsg_epoch_thresh', args.rsg_epoch_thresh + 1))
    if args.reweight == 'drw':
        starts.append(('DRW re-weighting', 'drw_epoch', args.drw_epoch))
    if args.sampler == 'deferred':
        starts.append(('deferred re-sampling', 'drs_epoch', args.drs_epoch))
    return [f'{phase} never starts: it would from epoch {start}, but the run trains epochs 0-{args.epochs - 1}; '
            f'lower --{flag.replace("_", "-")} ({getattr(args, flag)})' for phase, flag, start in starts
            if start >= args.epochs]


def resolve_recipe(args: argparse.Namespace) -> None:
    """Fill the flags left unset: the loss by head (LDAM + DRW where the cosine classifier is used, CE otherwise),
    the RSG CIFAR recipe's epoch milestones (LR decay from 159/179, DRW from 160, generation after 159 of 200)
    scaled to ``--epochs``, a warm-up that fits the run; and check the model name and the RSG flags."""
    if args.epochs < 1:
        raise ValueError(f'--epochs {args.epochs}: a run trains at least one epoch')
    if not timm.is_model(args.model):
        check_rsg_family(args.model)
        close = difflib.get_close_matches(args.model, timm.list_models(), n=5, cutoff=0.6)
        hint = f'close matches: {", ".join(close)}' if close else "timm.list_models('*name*') lists them"
        raise ValueError(f'Unknown model {args.model!r}; {hint}')
    # LDAM multiplies the logits by s (LDAM_DEFAULT_S unless set), meant for a cosine head's [-1, 1]; on a linear
    # head it diverges
    if args.cosine_classifier is None:
        cosine_head = arch_cosine_head(args.model)  # the CIFAR ResNets (USE_NORM) default to LDAM-DRW's recipe
        args.cosine_classifier = cosine_head is not None and (
            args.loss == 'ldam' or (args.loss is None and cosine_head is CosineHead.USE_NORM))
    if args.loss is None:
        args.loss = 'ldam' if args.cosine_classifier else 'ce'
    if args.reweight is None:
        args.reweight = 'drw' if args.loss == 'ldam' else 'none'
    if args.loss == 'ldam' and not args.cosine_classifier:
        _logger.warning(f'--loss ldam on the linear head of {args.model}: LDAM scales the logits by s '
                        f'(--ldam-s, {LDAM_DEFAULT_S:g} by default) for a cosine classifier and tends to diverge on a '
                        f'linear one')
    if args.warmup_epochs >= args.epochs > 0:
        _logger.warning(f'--warmup-epochs {args.warmup_epochs} would ramp the whole {args.epochs}-epoch run; '
                        f'using {args.epochs // 5}')
        args.warmup_epochs = args.epochs // 5
    is_rsg = is_rsg_model(args.model)
    for name, value in scaled_schedule(args.epochs).items():
        if getattr(args, name) is None and (is_rsg or name != 'rsg_epoch_thresh'):
            setattr(args, name, value)
    if getattr(args, 'dp_replicas', 1) < 1:  # absent from checkpoints older than the flag (--fork)
        raise ValueError(f'--dp-replicas {args.dp_replicas}: pass the number of DataParallel replicas to emulate '
                         f'(1 for one device, 2 for the official two-GPU CIFAR runs)')
    if args.select_on == 'val' and args.val_split == args.test_split:
        raise ValueError(f'--select-on val picks the epoch on --val-split and tests it on --test-split, but both are '
                         f'{args.val_split!r}: pass --val-split val (a split apart from the test split)')
    given = [f'--{k.replace("_", "-")}' for k in RSG_FLAGS if getattr(args, k) is not None]
    if given and not is_rsg:
        raise ValueError(f'{", ".join(given)} need an rsg_* model; --model {args.model} has no RSG')
    for message in phases_out_of_reach(args):
        _logger.warning(message)


def _load_initial_checkpoint(model: nn.Module, path: str) -> None:
    """Every weight of ``path`` (a checkpoint of this model, or of its backbone: RSG then starts fresh)."""
    state_dict = fill_fresh_rsg(unwrap_checkpoint(load_training_checkpoint(path)['state_dict'], model), model)
    check_state_dict_fits(state_dict, model, f'--initial-checkpoint {path!r}')
    model.load_state_dict(state_dict)
    _logger.info(f'Loaded the weights of {path}')


def _create_timm_model(args: argparse.Namespace, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model``, with ``--pretrained-path`` as timm's train.py takes it and a download that fails
    offline turned into one line that names the ways out."""
    path = getattr(args, 'pretrained_path', None)  # absent from the args of checkpoints older than the flag
    if pretrained and path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f'--pretrained-path {path!r} does not exist; pass the weights file '
                                    f'(.safetensors, .bin or .pth) of {backbone_arch(args.model)}')
        # timm reads 'file' before its url or hub id; num_classes -1 drops a classifier of another size
        kwargs['pretrained_cfg_overlay'] = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=path, num_classes=-1)
    try:
        return timm.create_model(args.model, pretrained=pretrained, **kwargs)
    except OSError as e:  # huggingface_hub: not downloadable and not in its cache
        if not pretrained or path:
            raise
        raise ValueError(f'--pretrained: the weights of {backbone_arch(args.model)} could not be downloaded and are '
                         f'not in the Hugging Face cache ({type(e).__name__}); offline, pass --pretrained-path FILE '
                         f'(a copy of the weights), or --no-pretrained to train from scratch') from None


def create_recipe_model(args: argparse.Namespace, num_classes: int, class_counts: Sequence[int],
                        start_weights: bool = True) -> nn.Module:
    """The model of resolved flags: timm's ``create_model`` plus the cosine head, RSG's class counts, grad
    checkpointing and ``torch.compile`` of the backbone stages.

    ``start_weights``: load what the run starts from (``--pretrained``, ``--pretrained-path``,
    ``--initial-checkpoint``); off for a model whose every weight is about to be restored (``--resume``, a fork's
    source), which then needs neither the network nor those files.
    """
    kwargs = dict(num_classes=num_classes, drop_rate=args.drop, drop_path_rate=args.drop_path)
    kwargs.update({k: getattr(args, k) for k in RSG_FLAGS if getattr(args, k) is not None})
    cosine_head = arch_cosine_head(args.model)
    cosine = args.cosine_classifier  # resolved by resolve_recipe
    if cosine and cosine_head is None:
        raise ValueError(f'--cosine-classifier is available for the CIFAR and timm ResNet families, not {args.model}')
    if cosine and cosine_head is CosineHead.USE_NORM:
        kwargs['use_norm'] = True
    if getattr(args, 'official_init', False):  # absent from the args of checkpoints older than the flag (--fork)
        if cosine_head is not CosineHead.SWAP:  # the timm ResNet family
            raise ValueError(f'--official-init is for the timm ResNet family (the CIFAR ResNets already follow the '
                             f'official init), not {args.model}')
        kwargs['zero_init_last'] = False
        if is_rsg_model(args.model):
            kwargs['rsg_init'] = 'backbone'
    kwargs = {k: v for k, v in dict(kwargs, **args.model_kwargs).items() if v is not None}
    pretrained = start_weights and (args.pretrained or bool(getattr(args, 'pretrained_path', None)))
    model = _create_timm_model(args, pretrained, **kwargs)
    if cosine and cosine_head is CosineHead.SWAP:
        set_cosine_classifier(model)
    if start_weights and getattr(args, 'initial_checkpoint', ''):
        _load_initial_checkpoint(model, args.initial_checkpoint)
    if is_rsg_model(model):
        model.set_class_counts(class_counts)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if args.torchcompile:
        # in place (Module.compile), so state_dict keys stay the backbone's; dynamic: generated samples change B.
        # Stage by stage, as the RSG train path calls them; a model outside the RSG families has no RSG to skip.
        stage_names = backbone_stage_names(model)
        for module in [model] if stage_names is None else [model.get_submodule(n) for n in stage_names]:
            module.compile(backend=args.torchcompile, dynamic=True)
    return model


def create_recipe_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """timm's optimizer for the resolved flags; ``--decay-all-params`` weight-decays biases and norm weights too."""
    return create_optimizer_v2(model, **optimizer_kwargs(cfg=args), filter_bias_and_bn=not args.decay_all_params)


def create_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer,
                        updates_per_epoch: int) -> Tuple[Any, int]:
    """timm's scheduler for the resolved flags; returns ``(scheduler, num_epochs)``. Epoch ``e`` trains at the rate
    set by ``scheduler.step(e)`` (``step(0)`` is the scheduler's initial state)."""
    return create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
