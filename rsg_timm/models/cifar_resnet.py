"""CIFAR ResNet-20/32/44/56/110 as a timm model.

The 3-stage ResNet of He et al. ("Deep Residual Learning for Image Recognition", https://arxiv.org/abs/1512.03385,
Section 4.2): a 3x3 stride-1 stem of 16 channels, no max-pool, three stages of 16/32/64 channels with ``n`` basic
blocks each (depth ``6n + 2``) and parameter-free "option A" shortcuts (subsample, then zero-pad the new channels).
This is the backbone of LDAM-DRW and of the official RSG CIFAR code. Module names follow theirs (``conv1``, ``bn1``,
``layerN.i.conv1/bn1/conv2/bn2``) so their checkpoints load through :func:`checkpoint_filter_fn`; only the head is
renamed (``linear`` there, ``fc`` here, as in timm). ``use_norm=True`` gives LDAM's cosine classifier.

timm has no CIFAR ResNet, and its ``ResNet`` class cannot express a stride-1 stem with three stages, hence this
small class that follows timm's model interface instead.
"""
from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerType, create_classifier, get_act_layer, get_device_dtype, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import checkpoint_seq

from ..compat import feature_take_indices
from ..constants import CIFAR10_MEAN, CIFAR10_STD
from .pretrained import resolve_zoo_tag, with_zoo_cfgs
from .state_dict import check_state_dict_fits, unwrap_checkpoint

__all__ = ['CifarResNet', 'BasicBlock', 'NormedLinear', 'checkpoint_filter_fn']


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Load our checkpoints and those of the official RSG / LDAM-DRW CIFAR code.

    The official layout differs only in the head (``linear``, LDAM's cosine one stored transposed), which
    :func:`unwrap_checkpoint` maps to ``fc``.
    """
    state_dict = unwrap_checkpoint(state_dict, model)
    check_state_dict_fits(state_dict, model, 'the checkpoint', pretrained_filter=True)
    return state_dict


class NormedLinear(nn.Module):
    """Cosine classifier of LDAM-DRW: normalised features times normalised class weights, no bias.

    The weight is stored ``[num_classes, in_features]`` like ``nn.Linear`` so timm's head handling applies.
    """

    def __init__(self, in_features: int, out_features: int, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        # LDAM's init: uniform, then every class vector scaled to unit norm.
        nn.init.uniform_(self.weight, -1., 1.)
        with torch.no_grad():
            self.weight.renorm_(2, 0, 1e-5).mul_(1e5)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample spatially, zero-pad the new channels on both sides (no parameters)."""

    def __init__(self, stride: int, extra_channels: int):
        super().__init__()
        self.stride = stride
        self.pad = (extra_channels // 2, extra_channels - extra_channels // 2)

    def extra_repr(self) -> str:
        return f'stride={self.stride}, pad={self.pad}'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0) + self.pad)


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers with an identity or option-A shortcut."""
    expansion = 1

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            act_layer: Type[nn.Module] = nn.ReLU,
            norm_layer: Type[nn.Module] = nn.BatchNorm2d,
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(planes, **dd)
        self.act1 = act_layer(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False, **dd)
        self.bn2 = norm_layer(planes, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.act2 = act_layer(inplace=True)
        needs_shortcut = stride != 1 or inplanes != planes
        self.downsample = PadShortcut(stride, planes - inplanes) if needs_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(self.drop_path(x) + shortcut)


def _create_head(
        num_features: int,
        num_classes: int,
        pool_type: str,
        use_norm: bool,
        device=None,
        dtype=None,
) -> Tuple[nn.Module, nn.Module]:
    """timm's pool + linear head, or pool + cosine head when ``use_norm``."""
    dd = {'device': device, 'dtype': dtype}
    if not use_norm:
        return create_classifier(num_features, num_classes, pool_type=pool_type, **dd)
    global_pool, _ = create_classifier(num_features, 0, pool_type=pool_type, **dd)
    in_features = num_features * global_pool.feat_mult()
    return global_pool, NormedLinear(in_features, num_classes, **dd) if num_classes > 0 else nn.Identity()


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth ``6n + 2``) with timm's model interface.

    Args:
        layers: blocks per stage (``n, n, n``).
        num_classes: classifier width; 0 gives pooled features.
        in_chans: input channels.
        global_pool: timm pooling type ('avg', 'max', 'avgmax', 'catavgmax', or '' for none).
        channels: stage widths; the stem has ``channels[0]``.
        use_norm: cosine (LDAM ``NormedLinear``) classifier instead of a linear one.
        act_layer: activation layer.
        norm_layer: normalisation layer.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
    """

    def __init__(
            self,
            layers: Tuple[int, ...] = (5, 5, 5),
            num_classes: int = 10,
            in_chans: int = 3,
            global_pool: str = 'avg',
            channels: Tuple[int, ...] = (16, 32, 64),
            use_norm: bool = False,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if len(layers) != len(channels):
            raise ValueError(f'layers {tuple(layers)} and channels {tuple(channels)} must have the same length')
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.use_norm = use_norm
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, channels[0], 3, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(channels[0], **dd)
        self.act1 = act_layer(inplace=True)
        self.feature_info = [dict(num_chs=channels[0], reduction=1, module='act1')]

        dpr = torch.linspace(0, drop_path_rate, sum(layers)).tolist()
        inplanes, reduction, block_idx = channels[0], 1, 0
        for stage_idx, (planes, depth) in enumerate(zip(channels, layers)):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            for i in range(depth):
                blocks.append(BasicBlock(
                    inplanes, planes, stride if i == 0 else 1, act_layer, norm_layer, dpr[block_idx], **dd))
                inplanes = planes
                block_idx += 1
            self.add_module(f'layer{stage_idx + 1}', nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=planes, reduction=reduction, module=f'layer{stage_idx + 1}'))
        self._stage_names = tuple(f'layer{i + 1}' for i in range(len(layers)))

        self.num_features = channels[-1]
        self.global_pool, self.fc = _create_head(self.num_features, num_classes, global_pool, use_norm, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal (fan-in) convs and linear weights, as LDAM-DRW / the official RSG code."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, str]:
        return dict(stem=r'^conv1|bn1', blocks=r'^layer(\d+)' if coarse else r'^layer(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the head (keeping the cosine type when ``use_norm``); ``global_pool=None`` keeps the pooling."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = _create_head(
            self.num_features, num_classes, global_pool, self.use_norm, **get_device_dtype(self))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(stage, x)
        return stage(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem and of each stage (``feature_info`` order), as timm's ``ResNet`` gives them.

        Args:
            x: input ``[B, C, H, W]``.
            indices: last ``n`` levels if int, all if None, else the listed levels.
            norm: unused (no final norm), kept for timm's signature.
            stop_early: stop after the last requested level.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stage_names = self._stage_names[:max_index] if stop_early else self._stage_names
        for feat_idx, name in enumerate(stage_names, start=1):
            x = self._run_stage(getattr(self, name), x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and head) after the last requested level; returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        for name in self._stage_names[max_index:]:
            setattr(self, name, nn.Sequential())  # empty, so checkpoint_seq can still iterate it
        prune_end = max_index < len(self._stage_names)
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        # named_children, not getattr(self, name) or _run_stage: TorchScript neither resolves an attribute from a
        # variable name nor passes modules as arguments
        for name, stage in self.named_children():
            if name in self._stage_names:
                if self.grad_checkpointing and not torch.jit.is_scripting():
                    x = checkpoint_seq(stage, x)
                else:
                    x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    # a zoo tag's weights need the architecture options they were trained with (e.g. LDAM's cosine head)
    kwargs = resolve_zoo_tag(variant, kwargs)
    return build_model_with_cfg(
        CifarResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),  # stem + three stages
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:1512.03385',
        **kwargs,
    }


# untagged (the default, no weights), and the model zoo's tags (``cifar_resnet32.<tag>``), see models/pretrained.py
default_cfgs = generate_default_cfgs(with_zoo_cfgs({
    'cifar_resnet20': _cfg(),
    'cifar_resnet32': _cfg(),
    'cifar_resnet44': _cfg(),
    'cifar_resnet56': _cfg(),
    'cifar_resnet110': _cfg(),
}))


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-20 (3 blocks per stage)."""
    model_args = dict(layers=(3, 3, 3))
    return _create_cifar_resnet('cifar_resnet20', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-32 (5 blocks per stage), the RSG / LDAM-DRW CIFAR backbone."""
    model_args = dict(layers=(5, 5, 5))
    return _create_cifar_resnet('cifar_resnet32', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-44 (7 blocks per stage)."""
    model_args = dict(layers=(7, 7, 7))
    return _create_cifar_resnet('cifar_resnet44', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-56 (9 blocks per stage)."""
    model_args = dict(layers=(9, 9, 9))
    return _create_cifar_resnet('cifar_resnet56', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """CIFAR ResNet-110 (18 blocks per stage)."""
    model_args = dict(layers=(18, 18, 18))
    return _create_cifar_resnet('cifar_resnet110', pretrained, **dict(model_args, **kwargs))
