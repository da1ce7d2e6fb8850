"""Model contract tests, after timm's tests/test_models.py, for cifar_resnet* and every fast rsg_* model."""
import os
import subprocess
import sys
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rsg_timm.models import CheckpointError, CifarResNet, RSGMixin, RSGOutput, checkpoint_filter_fn, is_rsg_model

from helpers import REPO_DIR

torch.backends.cudnn.benchmark = False
DEVICE = torch.device(os.environ.get('TORCH_DEVICE', 'cpu'))

CIFAR_MODELS = timm.list_models('cifar_resnet*')
# One small arch of each family beyond the ResNets (ConvNeXt, RegNet, EfficientNet, MobileNetV3, ResNetV2).
FAMILY_RSG_MODELS = [
    'rsg_convnext_atto', 'rsg_regnetx_002', 'rsg_efficientnet_b0', 'rsg_mobilenetv3_small_050', 'rsg_resnetv2_18']
# Every rsg_* model whose backbone is small: the CIFAR family, timm's tiny test_resnet and the family picks. The big
# ImageNet architectures are checked under the `slow` marker.
RSG_MODELS = [
    n for n in timm.list_models('rsg_*') if 'cifar_' + n[len('rsg_'):] in CIFAR_MODELS or n == 'rsg_test_resnet'
] + FAMILY_RSG_MODELS
SLOW_RSG_MODELS = ['rsg_resnet50', 'rsg_resnext50_32x4d']
ALL_MODELS = CIFAR_MODELS + RSG_MODELS
# The deeper CIFAR ResNets repeat the same blocks: their contract tests run under the `slow` marker.
_SLOW_DEPTHS = ('44', '56', '110')


def _params(names):
    """``names`` for parametrize, the deep CIFAR ResNets (and their rsg_ wrappers) marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n.endswith(_SLOW_DEPTHS) else n for n in names]


# Input sizes below the cfg's, as timm's tests cap ImageNet-family inputs; the rest use their cfg input_size.
_INPUT_SIZE = {'rsg_test_resnet': 64, **{n: 64 for n in FAMILY_RSG_MODELS}}
_NUM_CLASSES = 10
_EXPECTED_RSG_NAMES = [
    'rsg_resnet18', 'rsg_resnet34', 'rsg_resnet50', 'rsg_resnet101', 'rsg_resnet152', 'rsg_resnext50_32x4d',
    'rsg_resnext101_32x8d', 'rsg_seresnext50_32x4d', 'rsg_wide_resnet50_2', 'rsg_test_resnet',
    'rsg_resnet20', 'rsg_resnet32', 'rsg_resnet44', 'rsg_resnet56', 'rsg_resnet110',
]


def _input(model, name, batch_size=2):
    size = _INPUT_SIZE.get(name, model.pretrained_cfg['input_size'][-1])
    return torch.randn(batch_size, model.pretrained_cfg['input_size'][0], size, size, device=DEVICE)


def _create(name, **kwargs):
    return timm.create_model(name, **kwargs).to(DEVICE)


def _head_tail_batch(model, name):
    """8 samples of 8 different classes, with classes 0 and 1 (of 10) as the head."""
    model.set_class_counts([100, 90] + [10] * (_NUM_CLASSES - 2))
    return _input(model, name, batch_size=8), torch.arange(8, device=DEVICE)


def test_registration():
    names = timm.list_models('rsg_*')
    assert set(_EXPECTED_RSG_NAMES) <= set(names)
    assert set(CIFAR_MODELS) == {f'cifar_resnet{d}' for d in (20, 32, 44, 56, 110)}
    # the generated cfgs point at the backbone's own default weights
    assert timm.models.get_pretrained_cfg('rsg_resnet50').hf_hub_id == 'timm/resnet50.a1_in1k'
    assert timm.models.get_pretrained_cfg('rsg_resnet32').input_size == (3, 32, 32)
    assert timm.models.get_pretrained_cfg_value('rsg_resnext50_32x4d', 'num_classes') == 1000


def test_import_loads_only_the_model_code():
    """``import rsg_timm`` registers the models without the data, metrics, plots or run-reading layers or the zoo
    authoring tool, and reads the zoo table once (to register its tags)."""
    code = ('import sys, rsg_timm; from rsg_timm.models.pretrained import _shipped_tags; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "matplotlib") '
            'or m.startswith(("rsg_timm.data", "rsg_timm.metrics", "rsg_timm.model_card", "rsg_timm.losses", '
            '"rsg_timm.plots", "rsg_timm.run_folder", "rsg_timm.zoo_authoring")))); '
            'print(_shipped_tags.cache_info().misses)')
    proc = subprocess.run([sys.executable, '-c', code], cwd=REPO_DIR, capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split('\n')[:2] == ['[]', '1']


def test_cifar_resnet_matches_paper():
    # He et al., Table 6: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M parameters; option-A shortcuts have none.
    expected = {'cifar_resnet20': 269_722, 'cifar_resnet32': 464_154, 'cifar_resnet110': 1_727_962}
    for name, num_params in expected.items():
        assert sum(p.numel() for p in timm.create_model(name).parameters()) == num_params
    model = timm.create_model('cifar_resnet32')
    assert [k for k in model.state_dict() if 'layer1.0' in k][:2] == ['layer1.0.conv1.weight', 'layer1.0.bn1.weight']


@pytest.mark.parametrize('name', _params(ALL_MODELS))
def test_model_forward(name):
    model = _create(name, num_classes=_NUM_CLASSES).eval()
    x = _input(model, name)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (x.shape[0], _NUM_CLASSES) and not torch.isnan(out).any()
        if isinstance(model, RSGMixin):  # labels change nothing at eval time
            assert torch.equal(model(x, target=torch.zeros(x.shape[0], dtype=torch.long, device=DEVICE)), out)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [t.shape[1] for t in intermediates] == [f['num_chs'] for f in model.feature_info]


@pytest.mark.parametrize('name', _params(ALL_MODELS))
def test_model_backward(name):
    """timm's contract: model(x) in train mode without labels reaches every backbone parameter."""
    model = _create(name, num_classes=_NUM_CLASSES).train()
    model(_input(model, name)).mean().backward()
    backbone = {n: p for n, p in model.named_parameters() if not n.startswith('rsg.')}
    assert [n for n, p in backbone.items() if p.grad is None] == []


@pytest.mark.parametrize('name', _params(ALL_MODELS))
def test_model_default_cfgs(name):
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg['input_size'], device=DEVICE)
    assert model.num_classes == cfg['num_classes'] > 0 and model.num_features > 0 and model.head_hidden_size > 0
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features and tuple(feats.shape[-2:]) == cfg['pool_size']
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == (1, model.head_hidden_size)
        model.reset_classifier(0, '')
        assert tuple(model(x).shape[-2:]) == cfg['pool_size']
    state_dict = _create(name).state_dict()
    for key in ('classifier', 'first_conv'):
        assert f'{cfg[key]}.weight' in state_dict
    assert _create(name, num_classes=0, global_pool='')(x).dim() == 4


@pytest.mark.parametrize('name', _params(ALL_MODELS))
def test_model_features_only(name):
    model = _create(name)
    backbone = model if not isinstance(model, RSGMixin) else _create(model.backbone_name)
    features = _create(name, features_only=True)
    assert features.feature_info.channels() == [f['num_chs'] for f in backbone.feature_info]
    outputs = features(_input(model, name))
    assert [o.shape[1] for o in outputs] == features.feature_info.channels()


@pytest.mark.parametrize('name', _params(RSG_MODELS))
def test_rsg_train_output(name):
    model = _create(name, num_classes=_NUM_CLASSES).train()
    x, y = _head_tail_batch(model, name)
    raw = []  # RSG's own (unweighted) losses of each call
    model.rsg.register_forward_hook(lambda module, inputs, output: raw.append((output[1], output[2])))
    out = model(x, target=y)  # CESC phase: nothing generated
    assert isinstance(out, RSGOutput) and out.logits.shape == (8, _NUM_CLASSES) and torch.equal(out.target, y)
    assert sorted(out.aux_losses) == ['cesc', 'mv']  # weighted by the defaults rsg_cesc_weight 0.1, rsg_mv_weight 0.01
    torch.testing.assert_close(out.aux_losses['cesc'], 0.1 * raw[-1][0])
    assert out.aux_losses['mv'].item() == 0
    model.set_epoch(model.rsg.epoch_thresh + 1)
    out = model(x, target=y)  # generation phase: 2 head + 6 tail samples -> 6 generated tail samples
    assert out.logits.shape == (14, _NUM_CLASSES) and torch.equal(out.target[:8], y)
    assert not model.rsg_head_classes or set(out.target[8:].tolist()).isdisjoint(model.rsg_head_classes)
    assert raw[-1][1].item() > 0
    torch.testing.assert_close(out.aux_losses['mv'], 0.01 * raw[-1][1])


_CESC_PARAMS = ('linear', 'bias', 'centers', 'contrastive_module.0.weight', 'contrastive_module.2.weight',
                'contrastive_fc.weight')
_MV_PARAMS = ('linear', 'bias', 'centers', 'vec_transformation_module.0.weight')


@pytest.mark.parametrize('name', _params(RSG_MODELS))
def test_rsg_phase_grads(name):
    model = _create(name, num_classes=_NUM_CLASSES).train()
    model.set_grad_checkpointing()  # the train path also runs checkpointed stages
    x, y = _head_tail_batch(model, name)
    for epoch, expected in ((0, _CESC_PARAMS), (model.rsg.epoch_thresh + 1, _MV_PARAMS)):
        model.zero_grad(set_to_none=True)
        model.set_epoch(epoch)
        out = model(x, target=y)
        (F.cross_entropy(out.logits, out.target) + sum(out.aux_losses.values())).backward()
        grads = {n: p.grad for n, p in model.rsg.named_parameters()}
        assert all(grads[n] is not None for n in expected), epoch
    assert all(grads[n] is None and p.requires_grad
               for n, p in model.rsg.named_parameters() if n.startswith('contrastive'))


def test_is_rsg_model_names_and_modules():
    assert is_rsg_model('rsg_resnet32') and is_rsg_model('rsg_resnet50.a1_in1k')
    assert not is_rsg_model('cifar_resnet32') and not is_rsg_model('resnet50.a1_in1k')
    model = _create('rsg_resnet20')
    assert is_rsg_model(model) and is_rsg_model(torch.compile(model)) and not is_rsg_model(_create('cifar_resnet20'))


def test_rsg_feature_shape_and_stage():
    model = _create('rsg_resnet32')
    assert [model.rsg.C, model.rsg.H, model.rsg.W] == [32, 16, 16] and model.rsg_stage == 2
    assert model.rsg.epoch_thresh == 159 and model.backbone_name == 'cifar_resnet32'
    model = _create('rsg_test_resnet', num_classes=5, rsg_stage=2, rsg_epoch_thresh=3)
    stage = model.feature_info[2]
    assert [model.rsg.C, model.rsg.H] == [stage['num_chs'], 160 // stage['reduction']] and model.rsg.epoch_thresh == 3
    assert list(model.state_dict())[-1].startswith('rsg.')  # after the head, so features_only skips it
    with pytest.raises(ValueError, match='rsg_stage'):
        _create('rsg_resnet32', rsg_stage=4)
    with pytest.raises(RuntimeError, match='num_classes > 0'):
        _create('rsg_resnet20', num_classes=0).train()(torch.randn(2, 3, 32, 32), target=torch.zeros(2).long())


def test_set_class_counts():
    model = _create('rsg_resnet32')
    assert model.set_class_counts([5, 50, 50, 10, 100, 1, 1, 1, 1, 1]) == [1, 4]  # tie 1 vs 2: lower id
    assert model.rsg_head_classes == [1, 4]
    with pytest.raises(ValueError, match='10 classes'):
        model.set_class_counts([1, 2, 3])
    model.reset_classifier(20)  # new classes: fresh per-class RSG, official fallback until counts arrive
    assert model.rsg.num_classes == 20 and model.rsg_head_classes == [0, 1, 2, 3]
    assert model.backbone_kwargs['num_classes'] == 20


def test_head_fallback_warns_once():
    model = _create('rsg_resnet20').train()
    x, y = torch.randn(4, 3, 32, 32, device=DEVICE), torch.arange(4, device=DEVICE)
    with pytest.warns(UserWarning, match='set_class_counts'):
        model(x, target=y)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model(x, target=y)
    assert model.rsg_head_classes == [0, 1]


def _official_state_dict(model, with_rsg):
    """Our state_dict in the official RSG repo's layout: `module.` prefix, `linear` head, `RSG.*` keys."""
    official = {}
    for k, v in model.state_dict().items():
        if k.startswith('rsg.'):
            if not with_rsg:
                continue
            k = 'RSG.' + k[len('rsg.'):]
        elif k.startswith('fc.'):
            k = 'linear.' + k[len('fc.'):]
            if k == 'linear.weight' and 'fc.bias' not in model.state_dict():
                v = v.t()  # NormedLinear keeps [in_features, num_classes]
        official['module.' + k] = v.clone()
    return {'epoch': 200, 'arch': 'resnet32', 'state_dict': official}


@pytest.mark.parametrize('use_norm', [False, True])
def test_official_checkpoint_loads(use_norm):
    source = _create('rsg_resnet32', use_norm=use_norm).train()
    source(torch.randn(4, 3, 32, 32, device=DEVICE))  # non-trivial BN statistics
    source.eval()
    official = _official_state_dict(source, with_rsg=True)
    x = torch.randn(2, 3, 32, 32, device=DEVICE)
    for name in ('cifar_resnet32', 'rsg_resnet32'):
        model = _create(name, use_norm=use_norm, pretrained=True, pretrained_cfg_overlay=dict(state_dict=official))
        torch.testing.assert_close(model.eval()(x), source(x))
        if name == 'rsg_resnet32':
            torch.testing.assert_close(model.rsg.centers, source.rsg.centers)
    # the NormedLinear transpose is recognised by the missing bias, also when in_features == num_classes
    square = _create('cifar_resnet32', num_classes=64, use_norm=True).eval()
    loaded = _create('cifar_resnet32', num_classes=64, use_norm=True)
    loaded.load_state_dict(checkpoint_filter_fn(_official_state_dict(square, with_rsg=False), loaded))
    torch.testing.assert_close(loaded.fc.weight, square.fc.weight)


@pytest.mark.parametrize('name,backbone', [('rsg_resnet32', 'cifar_resnet32'), ('rsg_test_resnet', 'test_resnet')] + [
    (n, n[len('rsg_'):]) for n in FAMILY_RSG_MODELS])
def test_pretrained_backbone_file(name, backbone, tmp_path):
    """pretrained=True loads the backbone's weights (here a local file standing in for timm's) and a fresh RSG."""
    source = _create(backbone).eval()
    path = tmp_path / 'backbone.safetensors'
    save_file(source.state_dict(), str(path))
    model = _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = _input(model, name)
    torch.testing.assert_close(model(x), source(x))
    fresh = _create(name).state_dict()
    assert torch.equal(model.rsg.bias, fresh['rsg.bias'])
    # a different class count drops the classifier and keeps the rest, as timm does
    model = _create(name, num_classes=3, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    state_dict = model.state_dict()
    assert model.rsg.num_classes == 3
    classifier = model.pretrained_cfg['classifier'] + '.'
    assert all(torch.equal(state_dict[k], v) for k, v in source.state_dict().items() if not k.startswith(classifier))


def test_checkpoint_of_other_architecture_fails_clearly(tmp_path):
    path = tmp_path / 'test_resnet.safetensors'
    save_file(timm.create_model('test_resnet').state_dict(), str(path))
    for name in ('cifar_resnet32', 'rsg_resnet32'):
        with pytest.raises(CheckpointError, match='does not fit .*another architecture'):
            _create(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_cifar_resnet_cosine_head():
    model = _create('cifar_resnet32', use_norm=True)
    assert model.fc.weight.shape == (10, 64) and 'fc.bias' not in model.state_dict()
    logits = model.eval()(torch.randn(2, 3, 32, 32, device=DEVICE))
    assert logits.abs().max() <= 1 + 1e-5  # cosine similarities
    model.reset_classifier(7)
    assert type(model.fc).__name__ == 'NormedLinear' and model.fc.weight.shape == (7, 64)
    assert isinstance(model, CifarResNet)


@pytest.mark.slow
@pytest.mark.parametrize('name', SLOW_RSG_MODELS)
def test_big_rsg_models(name):
    model = _create(name, num_classes=_NUM_CLASSES).train()
    x, y = torch.randn(8, 3, 96, 96, device=DEVICE), torch.arange(8, device=DEVICE)
    model.set_class_counts(list(range(_NUM_CLASSES, 0, -1)))
    model.set_epoch(model.rsg.epoch_thresh + 1)
    out = model(x, target=y)
    assert out.logits.shape == (14, _NUM_CLASSES)
    assert model.eval()(x).shape == (8, _NUM_CLASSES)
