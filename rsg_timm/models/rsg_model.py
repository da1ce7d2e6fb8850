"""RSG models: a registered backbone with RSG inserted after one stage, active only while training with labels.

For every backbone arch present when rsg_timm is imported, ``rsg_<arch>`` is registered with timm:

* the CIFAR ResNets, named without their prefix (``cifar_resnet32`` -> ``rsg_resnet32``), RSG after stage 2 and
  ``rsg_epoch_thresh=159`` by default (the paper's 200-epoch CIFAR-LT recipe);
* every timm arch whose entrypoint builds one of timm's ``ResNet`` (resnet*, resnext*, seresnext*, wide_resnet*,
  ecaresnet*, res2net*, resnest*, skresnet*, test_resnet, ...), ``ConvNeXt``, ``RegNet`` (regnetx/y/v/z_*),
  ``EfficientNet`` (efficientnet*, tf_efficientnet*, mixnet*, mnasnet*, tinynet*, ...), ``MobileNetV3``
  (mobilenetv3*, mobilenetv4*, lcnet*, fbnetv3*, hardcorenas*) or ``ResNetV2`` (resnetv2*, BiT), RSG after the
  last stride-16 stage and ``rsg_epoch_thresh=79`` by default (the ImageNet-LT recipe: 90 epochs, generation over
  the last 10).

``rsg_stage`` indexes the backbone's ``feature_info`` (as ``forward_intermediates`` does): 3 is ``layer3`` of a
ResNet, ``stages.2`` of a ResNetV2, ``s3`` of a RegNet, ``blocks.4`` of an EfficientNet-B0; ConvNeXt has no stem
entry, so its stride-16 stage ``stages.2`` is 2.

Discovery reads each entrypoint's return annotation (``rsg_timm.compat.entrypoint_model_class``), so importing builds
no model; an entrypoint of a family's module that declares no class is named in a warning. An RSG model is its
backbone, built by the backbone's own timm entrypoint, with its class switched to a subclass that adds RSG
(``RSGResNet``, ``RSGConvNeXt``, ...): the state_dict keys are the backbone's plus ``rsg.*``, ``pretrained=True``
loads the backbone's timm weights (RSG starts fresh): every timm tag of the backbone is registered for ``rsg_<arch>``
too (``rsg_resnet152.tv_in1k``), with the same default; and RSG is registered after the head so that ``features_only``
gives the backbone's features. ``model(x)`` returns logits (eval, validation, export and every timm tool see the
backbone); ``model(x, target=y)`` in train mode returns an :class:`RSGOutput`.
"""
import inspect
import logging
import math
import warnings
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import PretrainedCfg, build_model_with_cfg, checkpoint_seq, generate_default_cfgs, \
    get_arch_pretrained_cfgs, model_entrypoint, register_model, split_model_name_tag
from timm.models.convnext import ConvNeXt, checkpoint_filter_fn as _convnext_filter_fn
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.regnet import RegNet
from timm.models.resnet import ResNet
from timm.models.resnetv2 import ResNetV2
from timm.utils import unwrap_model

from ..compat import entrypoint_model_class, regnet_filter_fn, switch_class
from ..rsg import RSG, num_head_classes
from .cifar_resnet import CifarResNet, NormedLinear, checkpoint_filter_fn
from .pretrained import zoo_tag_names
from .state_dict import check_state_dict_fits, fill_fresh_rsg, unwrap_checkpoint

__all__ = [
    'RSGOutput', 'RSGMixin', 'RSGResNet', 'RSGCifarResNet', 'RSGConvNeXt', 'RSGRegNet', 'RSGEfficientNet',
    'RSGMobileNetV3', 'RSGResNetV2', 'backbone_arch', 'backbone_stage_names', 'rsg_model_defaults',
]  # register_model adds each rsg_* entrypoint

_logger = logging.getLogger(__name__)


class RSGOutput(NamedTuple):
    """What an RSG model returns when called with labels in train mode."""
    logits: torch.Tensor  # [B + G, num_classes]: the batch, then the G generated samples
    target: torch.Tensor  # [B + G]: the labels, then the generated samples' labels
    # the weighted terms to add to the classifier's loss: 'cesc' (rsg_cesc_weight * CESC loss) and 'mv'
    # (rsg_mv_weight * MV loss, zero before generation starts)
    aux_losses: Dict[str, torch.Tensor]


class RSGMixin:
    """Adds a training-only RSG after the stage ``feature_info[rsg_stage]`` of a backbone with timm's interface.

    The backbone needs ``feature_info``, ``forward_intermediates`` (indexed like ``feature_info``) and
    ``forward_head``. The train path runs ``forward_intermediates`` up to the RSG stage, RSG, then the stage adapter
    each family subclass supplies: the stages after it (:func:`backbone_stage_names`) and whatever ``forward_features``
    applies after the last stage (:meth:`_rsg_forward_neck`). ``forward_features``, ``forward_intermediates``,
    ``group_matcher`` (RSG parameters fall in the final, head-like group) and everything else stay the backbone's.
    The train path honours grad checkpointing for the backbone stages; RSG itself is not checkpointed (its
    activations are one stage's worth).
    """

    # The ``nn.Sequential`` holding the stages (``stages``, ``blocks``); None: they are the top-level
    # ``feature_info`` modules after the stem (``layer1``.., ``s1``..).
    _rsg_stage_container: Optional[str] = None

    @classmethod
    def from_backbone(
            cls,
            backbone_name: str,
            *,
            rsg_stage: int,
            rsg_epoch_thresh: int,
            rsg_n_center: int = 15,
            rsg_contrastive_dim: int = 256,
            rsg_strength: float = 1.0,
            rsg_head_ratio: float = 0.2,
            rsg_cesc_weight: float = 0.1,
            rsg_mv_weight: float = 0.01,
            rsg_init: str = 'rsg',
            **kwargs,
    ) -> nn.Module:
        """Build ``backbone_name`` through its timm entrypoint (``kwargs`` go there) and add RSG.

        Args:
            backbone_name: registered timm arch, built with ``pretrained=False``.
            rsg_stage: RSG runs on the output of ``feature_info[rsg_stage]`` (``layer3`` of a ResNet for 3).
            rsg_epoch_thresh: last epoch of the CESC phase; samples are generated for ``epoch > rsg_epoch_thresh``.
            rsg_n_center: centres per class.
            rsg_contrastive_dim: width of the contrastive module.
            rsg_strength: transfer strength, in ``(0, 1]`` (see :func:`rsg_timm.rsg.check_transfer_strength`).
            rsg_head_ratio: share of classes (the most frequent ones) treated as head classes.
            rsg_cesc_weight: weight of the CESC loss in ``aux_losses['cesc']``.
            rsg_mv_weight: weight of the MV loss in ``aux_losses['mv']``.
            rsg_init: ``'rsg'`` keeps RSG's own init (the official CIFAR models); ``'backbone'`` re-initialises
                RSG's convolutions (kaiming, fan_out) and ``contrastive_fc`` (kaiming, fan_in) as the official
                ImageNet-family ResNet's init loop does, since RSG is built inside it (timm ResNets only).
        """
        if rsg_init not in _RSG_INITS:
            raise ValueError(f'rsg_init must be one of {_RSG_INITS}, got {rsg_init!r}')
        if rsg_init == 'backbone' and cls.__bases__[-1] is not ResNet:
            raise ValueError(f"rsg_init='backbone' follows the official ImageNet-family ResNet; the official "
                             f"{cls.__bases__[-1].__name__} keeps RSG's own init, so use rsg_init='rsg'")
        model = timm.create_model(backbone_name, **kwargs)
        base = cls.__bases__[-1]
        if type(model) is not base:
            raise TypeError(
                f'{backbone_name} builds {type(model).__name__}, not {base.__name__}; {cls.__name__} only adds RSG '
                f'to {base.__name__} itself (a subclass could override what the switch of class would drop)')
        switch_class(model, cls)  # adds methods only: the modules, parameters and state_dict keys stay the backbone's
        model.backbone_name = backbone_name
        model.backbone_kwargs = dict(kwargs)
        model.rsg_init = rsg_init
        model._init_rsg(
            stage=rsg_stage, n_center=rsg_n_center, contrastive_dim=rsg_contrastive_dim, transfer_strength=rsg_strength,
            epoch_thresh=rsg_epoch_thresh, head_ratio=rsg_head_ratio, cesc_weight=rsg_cesc_weight,
            mv_weight=rsg_mv_weight)
        return model

    def _init_rsg(
            self,
            stage: int,
            n_center: int,
            contrastive_dim: int,
            transfer_strength: float,
            epoch_thresh: int,
            head_ratio: float,
            cesc_weight: float,
            mv_weight: float,
    ) -> None:
        module_names = [info['module'] for info in self.feature_info]
        stage_names = backbone_stage_names(self)
        stages = [i for i, name in enumerate(module_names) if name in stage_names]
        if stage not in stages:
            raise ValueError(
                f'rsg_stage={stage} is not a stage of {self.backbone_name} (feature_info: {module_names}); '
                f'pass one of {stages}')
        if not 0. <= head_ratio <= 1.:
            raise ValueError(f'rsg_head_ratio must lie in [0, 1], got {head_ratio}')
        info = self.feature_info[stage]
        # [C, H, W] of that stage at the cfg's input size (RSG records it; its maths follow the actual maps).
        input_size = self.pretrained_cfg['input_size']
        feature_shape = [info['num_chs']] + [math.ceil(s / info['reduction']) for s in input_size[1:]]
        self.rsg_stage = stage
        self.rsg_head_ratio = head_ratio
        self.rsg_cesc_weight = cesc_weight
        self.rsg_mv_weight = mv_weight
        self.rsg_epoch = 0
        self.rsg_class_counts: Optional[List[int]] = None
        self._rsg_later_stages = tuple(stage_names[stage_names.index(info['module']) + 1:])
        self._rsg_args = dict(
            n_center=n_center, feature_maps_shape=feature_shape, contrastive_module_dim=contrastive_dim,
            transfer_strength=transfer_strength, epoch_thresh=epoch_thresh)
        self._rsg_head_warned = False
        self.rsg = self._create_rsg_module()  # registered after the head: FeatureListNet stops before it

    def _rsg_forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        """What ``forward_features`` applies after the last stage (nothing for a ResNet)."""
        return x

    def _create_rsg_module(self) -> RSG:
        """A fresh RSG for the current classes; head classes follow the official rule until class counts arrive."""
        rsg = RSG(
            num_classes=self.num_classes, head_class_lists=list(range(self.rsg_num_head_classes)), **self._rsg_args,
            **get_device_dtype(self))
        if self.rsg_init == 'backbone':
            _init_like_official_resnet(rsg)
        return rsg

    @property
    def rsg_num_head_classes(self) -> int:
        """How many classes are head classes (:func:`rsg_timm.rsg.num_head_classes` of ``rsg_head_ratio``)."""
        return num_head_classes(self.rsg_head_ratio, self.num_classes)

    @property
    def rsg_head_classes(self) -> List[int]:
        """Class ids RSG currently treats as head classes."""
        return self.rsg.head_mask.nonzero().flatten().tolist()

    def set_epoch(self, epoch: int) -> None:
        """Select the RSG phase: CESC while ``epoch <= rsg_epoch_thresh``, generation after."""
        self.rsg_epoch = int(epoch)

    def set_class_counts(self, class_counts: Sequence[int]) -> List[int]:
        """Make the :attr:`rsg_num_head_classes` most frequent classes the head (ties: lower id first).

        Args:
            class_counts: training images per class, ``[num_classes]``.

        Returns:
            The head class ids, sorted.
        """
        counts = [int(c) for c in torch.as_tensor(class_counts).flatten().tolist()]
        if len(counts) != self.num_classes:
            raise ValueError(
                f'class_counts has {len(counts)} entries but the model has {self.num_classes} classes; '
                f'pass the training set counts of the same classes (or create the model with that num_classes)')
        head = sorted(sorted(range(len(counts)), key=lambda i: (-counts[i], i))[:self.rsg_num_head_classes])
        self.rsg.set_head_classes(head)
        self.rsg_class_counts = counts
        return head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, **kwargs: Any) -> None:
        """Reset the backbone's head (a cosine head stays cosine); RSG's per-class parameters restart when the class
        count changes. ``kwargs`` are the backbone's own options (ConvNeXt's ``reset_other``, which its
        ``prune_intermediate_layers`` passes)."""
        from .classifier import CosineHead, model_cosine_head  # here: classifier.py imports this module
        swapped_cosine = model_cosine_head(self) is CosineHead.SWAP  # a CIFAR ResNet rebuilds its own (use_norm)
        super().reset_classifier(num_classes, global_pool, **kwargs)
        if swapped_cosine and num_classes > 0:
            self.fc = NormedLinear(self.fc.in_features, num_classes, **get_device_dtype(self.fc)).train(self.training)
        self.backbone_kwargs['num_classes'] = num_classes
        if global_pool is not None:  # None keeps the pooling the backbone was built with
            self.backbone_kwargs['global_pool'] = global_pool
        if num_classes != self.rsg.num_classes:
            self.rsg = self._create_rsg_module()
            self.rsg_class_counts = None
            self._rsg_head_warned = False

    def _forward_rsg(self, x: torch.Tensor, target: torch.Tensor) -> RSGOutput:
        if self.num_classes <= 0:
            raise RuntimeError('RSG needs a classifier: create the model with num_classes > 0 to train with labels')
        if self.rsg_class_counts is None and not self._rsg_head_warned:
            warnings.warn(
                f'{self.pretrained_cfg["architecture"]}: no class counts set, so classes 0..'
                f'{self.rsg_num_head_classes - 1} are the head classes (the official rule, right '
                f'only when classes are sorted by size). Call model.set_class_counts(train_class_counts).',
                stacklevel=2)
            self._rsg_head_warned = True
        x = self.forward_intermediates(x, indices=[self.rsg_stage], stop_early=True, intermediates_only=True)[0]
        x, loss_cesc, loss_mv, target = self.rsg(feature_maps=x, target=target, epoch=self.rsg_epoch)
        # A model-level flag means the backbone checkpoints its stage sequence itself (ResNet, EfficientNet);
        # ConvNeXt, RegNet and ResNetV2 stages carry their own flag and checkpoint their blocks inside.
        checkpoint = getattr(self, 'grad_checkpointing', False) and not torch.jit.is_scripting()
        for name in self._rsg_later_stages:  # [B + G, C, H, W] from here on
            stage = self.get_submodule(name)
            x = checkpoint_seq(stage, x) if checkpoint else stage(x)
        logits = self.forward_head(self._rsg_forward_neck(x))
        aux_losses = {'cesc': self.rsg_cesc_weight * loss_cesc, 'mv': self.rsg_mv_weight * loss_mv}
        return RSGOutput(logits, target, aux_losses)

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> Union[torch.Tensor, RSGOutput]:
        """Logits ``[B, num_classes]`` in eval mode or without labels; an :class:`RSGOutput` when training with them.

        Args:
            x: images ``[B, C, H, W]``.
            target: labels ``[B]``; only used in train mode.

        FX tracing (timm's feature extraction traces train and eval mode) gets the backbone's graph: a traced label
        is a placeholder without values, and RSG's choice of samples depends on them.
        """
        if target is None or not self.training or isinstance(target, torch.fx.Proxy):
            return super().forward(x)
        return self._forward_rsg(x, target)


def rsg_model_defaults() -> Dict[str, Any]:
    """The RSG settings an ``rsg_*`` model takes when its kwargs leave them out (the paper's CIFAR settings); the
    stage and the generation threshold have per-family defaults instead."""
    return {name: p.default for name, p in inspect.signature(RSGMixin.from_backbone).parameters.items()
            if name.startswith('rsg_') and p.default is not inspect.Parameter.empty}


def backbone_stage_names(model: nn.Module) -> Optional[List[str]]:
    """The modules a backbone of the RSG families (plain or ``rsg_``) runs one after another between its stem and
    its neck: ``layer1``.. of a ResNet, ``s1``.. of a RegNet, every block group ``blocks.0``.. of an EfficientNet.
    None for a model outside the families. The RSG stage is one of them; ``--torchcompile`` compiles each."""
    model = unwrap_model(model)
    family = _FAMILIES.get(type(model).__bases__[-1] if isinstance(model, RSGMixin) else type(model))
    if family is None:
        return None
    container = family.rsg_cls._rsg_stage_container
    if container is None:
        return [info['module'] for info in model.feature_info[1:]]
    return [f'{container}.{i}' for i in range(len(model.get_submodule(container)))]


def is_rsg_model(model: Union[nn.Module, str]) -> bool:
    """Whether ``model`` carries RSG: a module (also wrapped by DDP or ``torch.compile``), or a model name such as
    ``rsg_resnet32`` or ``rsg_resnet50.a1_in1k``. The one answer to the question for the whole package."""
    if isinstance(model, str):
        return backbone_arch(model) != timm.models.get_arch_name(model)
    return isinstance(unwrap_model(model), RSGMixin)


_RSG_INITS = ('rsg', 'backbone')


def _init_like_official_resnet(rsg: RSG) -> None:
    """The official ImageNet-family ResNet's init loop over RSG's modules: kaiming-normal (fan_out, relu) convolution
    weights and kaiming-normal (fan_in) linear weights; biases and RSG's own parameters keep RSG's init."""
    for m in rsg.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)


class RSGResNet(RSGMixin, ResNet):
    """timm ``ResNet`` (any variant) with RSG; see :class:`RSGMixin`."""


class RSGCifarResNet(RSGMixin, CifarResNet):
    """CIFAR ResNet with RSG; see :class:`RSGMixin`."""


class RSGConvNeXt(RSGMixin, ConvNeXt):
    """timm ``ConvNeXt`` with RSG; see :class:`RSGMixin`."""
    _rsg_stage_container = 'stages'

    def _rsg_forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_pre(x)  # Identity unless the head norm comes first (head_norm_first)


class RSGRegNet(RSGMixin, RegNet):
    """timm ``RegNet`` with RSG; see :class:`RSGMixin`."""

    def _rsg_forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


class RSGEfficientNet(RSGMixin, EfficientNet):
    """timm ``EfficientNet`` (and its relatives: MixNet, MnasNet, TinyNet, ...) with RSG; see :class:`RSGMixin`."""
    _rsg_stage_container = 'blocks'

    def _rsg_forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv_head(x))


class RSGMobileNetV3(RSGMixin, MobileNetV3):
    """timm ``MobileNetV3`` (and MobileNetV4, LCNet, FBNetV3) with RSG; its head conv sits in ``forward_head``."""
    _rsg_stage_container = 'blocks'


class RSGResNetV2(RSGMixin, ResNetV2):
    """timm ``ResNetV2`` (pre-activation ResNets, BiT) with RSG; see :class:`RSGMixin`."""
    _rsg_stage_container = 'stages'

    def _rsg_forward_neck(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


def _resnet_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm ResNet weights, or official RSG ImageNet checkpoints (same names, plus ``module.`` / ``RSG.``)."""
    state_dict = unwrap_checkpoint(state_dict, model)
    check_state_dict_fits(state_dict, model, 'the checkpoint', pretrained_filter=True)
    return state_dict


def _rsg_filter_fn(
        backbone_filter_fn: Optional[Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]]],
        state_dict: Dict[str, Any],
        model: nn.Module,
) -> Dict[str, torch.Tensor]:
    """The backbone's filter, then fresh RSG values for a backbone-only checkpoint (strict loading checks the rest)."""
    state_dict = backbone_filter_fn(state_dict, model) if backbone_filter_fn is not None else state_dict
    return fill_fresh_rsg(state_dict, model)


class _Family(NamedTuple):
    """How to wrap one backbone class: the RSG subclass, entrypoint defaults and builder arguments."""
    rsg_cls: type
    rsg_stage: int
    rsg_epoch_thresh: int
    filter_fn: Optional[Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]]]  # the backbone's own
    feature_cfg: Dict[str, Any]  # the backbone builder's, so that features_only gives the backbone's features


def _regnet_filter(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """timm's RegNet filter (pycls names) takes no model argument."""
    return regnet_filter_fn(state_dict)


# The default RSG stage of the ImageNet-style families is the last stride-16 one, where the paper puts RSG in a
# ResNet (layer3: 14x14 maps at 224 px).
_FAMILIES = {
    CifarResNet: _Family(RSGCifarResNet, 2, 159, checkpoint_filter_fn, dict(out_indices=(0, 1, 2, 3))),
    ResNet: _Family(RSGResNet, 3, 79, _resnet_filter_fn, {}),
    ConvNeXt: _Family(
        RSGConvNeXt, 2, 79, _convnext_filter_fn, dict(out_indices=(0, 1, 2, 3), flatten_sequential=True)),
    RegNet: _Family(RSGRegNet, 3, 79, _regnet_filter, {}),
    EfficientNet: _Family(RSGEfficientNet, 3, 79, None, dict(flatten_sequential=True)),
    MobileNetV3: _Family(RSGMobileNetV3, 3, 79, None, dict(flatten_sequential=True)),
    ResNetV2: _Family(RSGResNetV2, 3, 79, None, dict(flatten_sequential=True)),
}


def _discover_backbones(archs: Iterable[str]) -> Dict[str, Tuple[str, _Family]]:
    """``rsg_<arch>`` -> (arch, family) for every arch whose entrypoint builds a family class; warns about the
    entrypoints of a family's module that do not say which class they build, rather than skip them unseen."""
    found, unclassified = {}, []
    family_modules = {cls.__module__ for cls in _FAMILIES}
    for arch in archs:
        built = entrypoint_model_class(arch)
        if built is None and model_entrypoint(arch).__module__ in family_modules:
            unclassified.append(arch)
        family = _FAMILIES.get(built)
        if family is None:
            continue
        name = 'rsg_' + arch.removeprefix('cifar_')
        if name in found:  # list_models is sorted, so cifar_* claims its name before a same-named timm arch
            _logger.warning(f'{name} already wraps {found[name][0]}; not registering it for {arch}')
            continue
        found[name] = (arch, family)
    if unclassified:
        _logger.warning(f'{", ".join(unclassified)}: timm declares no model class for these entrypoints of the '
                        f'modules of the RSG families, so no rsg_* is registered for them; rsg_timm.compat lists '
                        f'the unannotated entrypoints of the timm version it was written for')
    return found


def _create_rsg(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    arch, family = _RSG_BACKBONES[variant]
    return build_model_with_cfg(
        partial(family.rsg_cls.from_backbone, arch),
        variant,
        pretrained,
        pretrained_filter_fn=partial(_rsg_filter_fn, family.filter_fn),
        feature_cfg=dict(family.feature_cfg),
        **kwargs,
    )


def _rsg_cfgs(backbones: Dict[str, Tuple[str, _Family]]) -> Dict[str, PretrainedCfg]:
    """Every timm tag of each backbone as ``rsg_<arch>.<tag>``, with the backbone tag's data config and weights (full
    hub id; timm's registration sets the architecture and tag); the default comes first, marked ``*`` so that it
    stays the default. Zoo tags are left out (see models/pretrained.py)."""
    zoo = set(zoo_tag_names())
    cfgs = {}
    for rsg_name, (arch, _) in backbones.items():
        for i, (name, cfg) in enumerate(get_arch_pretrained_cfgs(arch).items()):  # registration order: default first
            if name not in zoo:
                tag = split_model_name_tag(name)[1]
                cfgs[f'{rsg_name}.{tag}*' if i == 0 else f'{rsg_name}.{tag}'] = cfg
    return cfgs


_RSG_BACKBONES = _discover_backbones(timm.list_models())

default_cfgs = generate_default_cfgs(_rsg_cfgs(_RSG_BACKBONES))


def _register_rsg_entrypoint(name: str, arch: str, family: _Family) -> None:
    """Create, name, bind and register the entrypoint ``name`` (the hand-written two-statement form)."""
    def entrypoint(pretrained: bool = False, **kwargs) -> nn.Module:
        model_args = dict(rsg_stage=family.rsg_stage, rsg_epoch_thresh=family.rsg_epoch_thresh)
        return _create_rsg(name, pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f'{arch} with RSG after feature_info stage {family.rsg_stage} (``rsg_stage``), generating samples after epoch '
        f'{family.rsg_epoch_thresh} (``rsg_epoch_thresh``); RSG runs only in training with labels.')
    globals()[name] = entrypoint
    register_model(entrypoint)


for _name, (_arch, _family) in _RSG_BACKBONES.items():
    _register_rsg_entrypoint(_name, _arch, _family)
del _name, _arch, _family


def check_rsg_family(model_name: str) -> None:
    """Refuse ``rsg_<arch>`` where ``<arch>`` is a timm model of a family RSG has no stage adapter for (a ViT, ...)
    with one line naming the families it has; other names pass (an unknown one is the caller's to report)."""
    arch = timm.models.get_arch_name(model_name)
    backbone = arch[len('rsg_'):]
    if not arch.startswith('rsg_') or arch in _RSG_BACKBONES or not timm.is_model(backbone):
        return
    kind = getattr(entrypoint_model_class(backbone), '__name__', 'model')
    families = ', '.join(family.__name__ for family in _FAMILIES)
    raise ValueError(f'{arch}: RSG supports these families: {families} ({len(_RSG_BACKBONES)} archs, '
                     f"timm.list_models('rsg_*')); {backbone} is a {kind}, which it does not wrap (the README says "
                     f'why for Vision Transformers). Train it without RSG: --model {backbone}')


def backbone_arch(model_name: str) -> str:
    """The plain backbone arch behind a model name: ``rsg_resnet32`` -> ``cifar_resnet32``, ``rsg_resnet50.a1_in1k``
    -> ``resnet50``; a name without RSG is returned without its tag."""
    arch = timm.models.get_arch_name(model_name)
    return _RSG_BACKBONES[arch][0] if arch in _RSG_BACKBONES else arch
