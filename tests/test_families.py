"""RSG beyond the ResNets: ConvNeXt, RegNet, EfficientNet, MobileNetV3 and ResNetV2 through the stage adapter.

timm's model checks (forward, backward, default cfg, features, reset_classifier, RSG phases, pretrained file) run
for one small arch per family in test_models.py (``FAMILY_RSG_MODELS``); this file pins what is family-specific.
"""
import csv
import logging
import os
import subprocess
import sys

import pytest
import timm
import torch

from rsg_timm.export import save_pretrained, strip_rsg
from rsg_timm.compat import entrypoint_model_class
from rsg_timm.models import RSGOutput, rsg_model

from rsg_timm.recipes import create_recipe_model, resolve_recipe
from helpers import REPO_DIR, load_script
from test_models import FAMILY_RSG_MODELS

_MODULES = ('convnext', 'regnet', 'efficientnet', 'mobilenetv3', 'resnetv2')
_SIZE = 64


def _batch(model, batch_size=8):
    model.set_class_counts([100, 90] + [10] * (model.num_classes - 2))
    return torch.randn(batch_size, 3, _SIZE, _SIZE), torch.arange(batch_size) % model.num_classes


def test_every_arch_of_the_families_is_registered():
    names = set(timm.list_models('rsg_*'))
    for module in _MODULES + ('resnet',):
        archs = timm.list_models(module=module)
        assert archs and {f'rsg_{a}' for a in archs} <= names, module
    # every entrypoint that builds a family class, wherever timm defines it (resnest, res2net, ...)
    family_archs = [a for a in timm.list_models() if entrypoint_model_class(a) in rsg_model._FAMILIES]
    assert len(family_archs) > 300
    assert {'rsg_' + a.removeprefix('cifar_') for a in family_archs} <= names
    assert {'rsg_convnext_tiny', 'rsg_regnety_040', 'rsg_efficientnet_b3', 'rsg_mobilenetv4_conv_small',
            'rsg_resnetv2_50x1_bit'} <= names
    assert timm.models.get_pretrained_cfg('rsg_convnext_tiny').hf_hub_id == 'timm/convnext_tiny.in12k_ft_in1k'


def test_an_entrypoint_of_a_family_module_that_declares_no_class_is_named(monkeypatch, caplog):
    monkeypatch.setattr(rsg_model, 'entrypoint_model_class',
                        lambda arch: None if arch in ('test_resnet', 'test_vit') else entrypoint_model_class(arch))
    with caplog.at_level(logging.WARNING, logger=rsg_model.__name__):
        found = rsg_model._discover_backbones(['test_convnext', 'test_resnet', 'test_vit'])
    assert list(found) == ['rsg_test_convnext']
    assert 'test_resnet: timm declares no model class' in caplog.text and 'test_vit' not in caplog.text


def test_registry_import_builds_no_model():
    code = ('import torch.nn as nn\n'
            'built = []\n'
            'init = nn.Module.__init__\n'
            'def counting_init(self, *args, **kwargs):\n'
            '    built.append(type(self).__name__)\n'
            '    init(self, *args, **kwargs)\n'
            'nn.Module.__init__ = counting_init\n'
            'import timm, rsg_timm\n'
            'print(len(built), len(timm.list_models("rsg_*")))\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO_DIR, capture_output=True, text=True, check=True,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    built, registered = map(int, out.stdout.split())
    assert built == 0 and registered == len(timm.list_models('rsg_*'))


@pytest.mark.parametrize('name,stage,module', [
    ('rsg_convnext_atto', 2, 'stages.2'), ('rsg_regnetx_002', 3, 's3'), ('rsg_efficientnet_b0', 3, 'blocks.4'),
    ('rsg_mobilenetv3_small_050', 3, 'blocks.3'), ('rsg_resnetv2_18', 3, 'stages.2'),
])
def test_default_stage_is_the_last_stride_16_stage(name, stage, module):
    model = timm.create_model(name, num_classes=10)
    info = model.feature_info[model.rsg_stage]
    assert (model.rsg_stage, info['module'], info['reduction']) == (stage, module, 16)
    assert [model.rsg.C, model.rsg.H, model.rsg.W] == [info['num_chs'], 14, 14] and model.rsg.epoch_thresh == 79


@pytest.mark.parametrize('name,kwargs', [(n, {}) for n in FAMILY_RSG_MODELS] + [
    ('rsg_convnext_atto', dict(head_norm_first=True)),  # norm_pre is a real norm, applied after the last stage
    ('rsg_efficientnet_b0', dict(rsg_stage=4)),  # the last stage: only conv_head and bn2 follow
    ('rsg_resnetv2_18', dict(rsg_stage=1)),
])
def test_cesc_phase_runs_the_backbone(name, kwargs):
    """Before generation RSG passes the maps through, so the train path must equal the plain forward: the stages
    after the RSG stage and the family's neck are all run, once, in order (also with grad checkpointing)."""
    model = timm.create_model(name, num_classes=10, **kwargs).train()
    x, y = _batch(model)
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        out = model(x, target=y)
        assert isinstance(out, RSGOutput) and torch.equal(out.target, y)
        torch.testing.assert_close(out.logits, model(x))


@pytest.mark.parametrize('name,stage,valid', [
    ('rsg_convnext_atto', 4, r'\[0, 1, 2, 3\]'),
    ('rsg_mobilenetv3_small_050', 0, r'\[1, 2, 3, 4\]'),  # feature_info[0] is the stem (bn1), not a stage
    ('rsg_resnetv2_18', 0, r'\[1, 2, 3, 4\]'),
])
def test_rsg_stage_outside_the_stages_fails_clearly(name, stage, valid):
    with pytest.raises(ValueError, match=f'rsg_stage={stage} is not a stage of {name[4:]}.*pass one of {valid}'):
        timm.create_model(name, rsg_stage=stage)


def _numbered(prefix, n):
    return [f'{prefix}{i}' for i in range(n)]


@pytest.mark.parametrize('name,compiled', [
    ('rsg_resnet20', ['layer1', 'layer2', 'layer3']),
    ('cifar_resnet20', ['layer1', 'layer2', 'layer3']),
    ('rsg_test_resnet', ['layer1', 'layer2', 'layer3', 'layer4']),
    ('rsg_convnext_atto', _numbered('stages.', 4)),  # its feature_info has no stem entry to skip
    ('rsg_regnetx_002', ['s1', 's2', 's3', 's4']),
    ('rsg_efficientnet_b0', _numbered('blocks.', 7)),  # feature_info names only blocks 1, 2, 4, 6
    ('efficientnet_b0', _numbered('blocks.', 7)),
    ('rsg_mobilenetv3_small_050', _numbered('blocks.', 6)),
    ('rsg_resnetv2_18', _numbered('stages.', 4)),
    ('test_vit', ['']),  # outside the RSG families: the whole model
])
def test_torchcompile_compiles_every_stage_of_the_family(name, compiled, monkeypatch):
    """Every stage the forward and the RSG train path call, each compiled once, in place; recorded, not compiled."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, 'compile', lambda module, **kwargs: calls.append((module, kwargs)))
    train = load_script('train.py')
    args = train._parse_args(['--model', name, '--torchcompile', '--loss', 'ce'])
    resolve_recipe(args)
    counts = [8, 6, 4, 3, 2, 2, 2, 2, 2, 2]
    model = create_recipe_model(args, len(counts), counts)
    names = {id(module): n for n, module in model.named_modules()}
    assert [names[id(module)] for module, _ in calls] == compiled
    assert all(kwargs == dict(backend='inductor', dynamic=True) for _, kwargs in calls)


@pytest.mark.parametrize('name', FAMILY_RSG_MODELS)
def test_export_loads_in_plain_timm(name, tmp_path):
    model = timm.create_model(name, num_classes=10).train()
    with torch.no_grad():
        model(torch.randn(4, 3, _SIZE, _SIZE))  # BN statistics away from their defaults
    model.reset_classifier(4)  # the export follows the new head
    model.eval()
    x = torch.randn(2, 3, _SIZE, _SIZE)
    backbone = strip_rsg(model)
    assert type(backbone) is type(model).__bases__[-1] and backbone.pretrained_cfg['architecture'] == name[4:]
    torch.testing.assert_close(backbone(x), model(x), rtol=0, atol=0)
    out = save_pretrained(model, tmp_path / 'export')
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.pretrained_cfg['architecture'] == name[len('rsg_'):] and loaded.num_classes == 4
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ train.py

@pytest.mark.parametrize('name', FAMILY_RSG_MODELS)
def test_train_through_both_rsg_phases(name, tiny_folder, tmp_path):
    """Epoch 0 trains CESC, epoch 1 generates tail samples, on 32x32 inputs (a cfg overlay keeps the CPU run short)."""
    train = load_script('train.py')
    train.main([
        '--model', name, '--dataset', 'folder_lt', '--data-dir', tiny_folder, '--val-split', 'val',
        '--output', str(tmp_path), '--experiment', 'run', '-b', '12', '--epochs', '2', '--rsg-epoch-thresh', '0',
        '--loss', 'ce', '--reweight', 'none', '--lr', '0.01', '--warmup-epochs', '0', '--workers', '0',
        '--no-progress', '--log-interval', '0',
        '--model-kwargs', "pretrained_cfg_overlay={'input_size': (3, 32, 32)}"])
    with open(tmp_path / 'run' / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]['train_mv']) == 0 and float(rows[0]['train_generated']) == 0  # CESC phase
    assert float(rows[1]['train_mv']) > 0 and float(rows[1]['train_generated']) > 0  # generation phase
    exported = timm.create_model(f'local-dir:{tmp_path / "run"}', pretrained=True)
    assert exported.pretrained_cfg['architecture'] == name[len('rsg_'):]


def test_finetune_recipe_resolves():
    train = load_script('train.py')
    config = os.path.join(REPO_DIR, 'configs', 'folder_lt_finetune_convnext_rsg.yaml')
    args = train._parse_args(['--config', config, '--data-dir', 'DIR'])
    resolve_recipe(args)
    assert args.model in timm.list_models('rsg_*') and args.pretrained and args.dataset == 'folder_lt'
    assert timm.models.get_pretrained_cfg(args.model).hf_hub_id  # timm weights to start from
    assert args.rsg_epoch_thresh + 1 == args.drs_epoch < args.epochs  # generation and re-sampling start together
