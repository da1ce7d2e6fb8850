"""Checkpoints saved by the official RSG scripts, as users hold them: validate.py --checkpoint, create_eval_model and
the converter (python -m rsg_timm.convert) all load them, with the head recognised from its keys.

tests/data holds an official CIFAR ResNet-32 LDAM checkpoint with the official model's eval logits on a fixed input,
and the key->shape manifests of the official ImageNet-LT (ResNeXt-50), Places-LT (ResNet-152) and iNaturalist 2018
(ResNet-50) checkpoints; state dicts are built from those shapes here.
"""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F

from helpers import REPO_DIR, TESTDATA_DIR, load_script
from rsg_timm.eval_model import create_eval_model
from rsg_timm.convert import convert_official_checkpoint
from rsg_timm.convert import main as convert_main
from rsg_timm.models import CheckpointError, NormedLinear

OFFICIAL_CIFAR = os.path.join(TESTDATA_DIR, 'official_cifar_resnet32_ldam.pth.tar')
OFFICIAL_LOGITS = os.path.join(TESTDATA_DIR, 'official_cifar_resnet32_ldam.expected.pt')
MANIFESTS = os.path.join(TESTDATA_DIR, 'official_imagenet_manifests.json')

validate_script = load_script('validate.py')


def _official_cifar():
    return torch.load(OFFICIAL_CIFAR, map_location='cpu', weights_only=True)


def _expected():
    return torch.load(OFFICIAL_LOGITS, map_location='cpu', weights_only=True)


def _eval_logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def _save(checkpoint, path):
    torch.save(checkpoint, path)
    return str(path)


# --- the CIFAR file: the official logits, through every load path --------------------------------------------------

@pytest.mark.parametrize('model_name', ['cifar_resnet32', 'rsg_resnet32'])
def test_create_eval_model_reproduces_the_official_logits(model_name):
    model, class_counts, label_names = create_eval_model(model_name, OFFICIAL_CIFAR)
    expected = _expected()
    assert isinstance(model.get_classifier(), NormedLinear) and model.num_classes == 10
    torch.testing.assert_close(_eval_logits(model, expected['input']), expected['logits'], rtol=1e-5, atol=1e-5)
    assert class_counts is None and label_names is None  # the official file records neither


def test_module_and_official_rsg_prefixes_load(tmp_path):
    # as a DataParallel RSG run saves it: every key under module., the RSG module as RSG.*
    checkpoint = _official_cifar()
    rsg_state = {f'RSG.{k[len("rsg."):]}': torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in timm.create_model('rsg_resnet32').state_dict().items() if k.startswith('rsg.')}
    checkpoint['state_dict'] = {f'module.{k}': v for k, v in {**checkpoint['state_dict'], **rsg_state}.items()}
    path = _save(checkpoint, tmp_path / 'dp_rsg.pth.tar')
    expected = _expected()
    rsg_model, _, _ = create_eval_model('rsg_resnet32', path)
    torch.testing.assert_close(rsg_model.rsg.centers, rsg_state['RSG.centers'])  # the trained RSG, not a fresh one
    for name in ('rsg_resnet32', 'cifar_resnet32'):  # the plain backbone drops the RSG keys
        model = rsg_model if name == 'rsg_resnet32' else create_eval_model(name, path)[0]
        torch.testing.assert_close(_eval_logits(model, expected['input']), expected['logits'], rtol=1e-5, atol=1e-5)


def test_official_linear_head_with_bias_loads_as_timm_linear(tmp_path):
    # a CE / focal run of the official CIFAR code: nn.Linear named linear, stored [out, in] with a bias
    checkpoint = _official_cifar()
    weight, bias = torch.randn(10, 64), torch.randn(10)
    checkpoint['state_dict'].update({'linear.weight': weight, 'linear.bias': bias})
    model, _, _ = create_eval_model('cifar_resnet32', _save(checkpoint, tmp_path / 'ce.pth.tar'))
    assert type(model.get_classifier()) is torch.nn.Linear
    x = torch.randn(3, 64)
    torch.testing.assert_close(model.get_classifier()(x), x @ weight.t() + bias)


def test_pretrained_filter_takes_the_official_file():
    model = timm.create_model('cifar_resnet32', pretrained=True, use_norm=True,
                              pretrained_cfg_overlay=dict(file=OFFICIAL_CIFAR))
    expected = _expected()
    torch.testing.assert_close(_eval_logits(model, expected['input']), expected['logits'], rtol=1e-5, atol=1e-5)


def test_validate_py_checkpoint_equals_the_converted_export(tiny_demo, tmp_path):
    common = ['--dataset', 'demo', '--data-dir', tiny_demo, '-b', '80', '-j', '0']
    by_checkpoint = validate_script.main(['--model', 'cifar_resnet32', '--checkpoint', OFFICIAL_CIFAR, *common])
    out_dir = convert_main([OFFICIAL_CIFAR, str(tmp_path / 'export')])
    by_export = validate_script.main(['--model', f'local-dir:{out_dir}', *common])
    for key in ('top1', 'top5', 'many', 'medium', 'few', 'ece', 'num_images'):
        assert by_checkpoint[key] == pytest.approx(by_export[key], abs=1e-6), key
    assert by_checkpoint['num_images'] == 80


def test_converter_writes_a_plain_timm_export(tmp_path):
    out_dir = convert_official_checkpoint(OFFICIAL_CIFAR, tmp_path / 'export')  # arch from the file: resnet32
    config = json.loads((out_dir / 'config.json').read_text())
    assert config['architecture'] == 'cifar_resnet32' and config['num_classes'] == 10
    assert config['model_args']['use_norm'] is True  # the cosine head
    card = (out_dir / 'README.md').read_text()
    assert 'official_cifar_resnet32_ldam.pth.tar' in card and 'github.com/Jianf-Wang/RSG' in card
    assert 'epoch 200' in card
    expected = _expected()
    restored, _, _ = create_eval_model(f'local-dir:{out_dir}')
    torch.testing.assert_close(_eval_logits(restored, expected['input']), expected['logits'], rtol=1e-5, atol=1e-5)


def test_converter_exports_a_timm_resnet_with_the_official_test_transform(tmp_path):
    path = _save(_official_imagenet_checkpoint('resnet18', 7), tmp_path / 'official.pth')
    out_dir = convert_official_checkpoint(path, tmp_path / 'export', 'rsg_resnet18')  # exported as its backbone
    config = json.loads((out_dir / 'config.json').read_text())
    assert (config['architecture'], config['num_classes'], config['cosine_classifier']) == ('resnet18', 7, True)
    cfg = config['pretrained_cfg']
    assert (cfg['input_size'], cfg['crop_pct'], cfg['interpolation']) == ([3, 224, 224], 0.875, 'bilinear')
    assert 'tag' not in cfg and 'paper_ids' not in cfg  # not timm's resnet18 weights
    plain = timm.create_model(f'local-dir:{out_dir}', pretrained=True)  # plain timm: same classes, scaled logits
    restored, _, _ = create_eval_model(f'local-dir:{out_dir}')
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_eval_logits(plain, x).argmax(1), _eval_logits(restored, x).argmax(1))


def test_converter_command_refuses_a_file_that_is_not_official(tmp_path):
    path = _save({'state_dict': timm.create_model('resnet18').state_dict()}, tmp_path / 'timm.pth')
    result = subprocess.run([sys.executable, '-m', 'rsg_timm.convert', path, str(tmp_path / 'out')], cwd=REPO_DIR,
                            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=REPO_DIR))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path!r} is not an official RSG checkpoint: it has no linear.* or fc_.* classifier. A train.py "
        f"checkpoint is exported by its run (or python -m rsg_timm.hub push RUN_DIR --dry-run DIR)"]
    assert not (tmp_path / 'out').exists()


def test_converter_needs_the_architecture_when_the_file_names_none(tmp_path):
    path = _save(_official_imagenet_checkpoint('resnet18', 7), tmp_path / 'official.pth')
    with pytest.raises(ValueError, match=r"does not name a known architecture \(arch: None\); pass --model"):
        convert_official_checkpoint(path, tmp_path / 'export')


@pytest.mark.parametrize('change,error,match', [
    (lambda sd: sd.update({'fc.weight': torch.randn(10, 64), 'fc.bias': torch.zeros(10)}), CheckpointError,
     'more than one classifier'),
    (lambda sd: sd.update({'linear.weight': torch.randn(640)}), CheckpointError, r'shape \[640\], not \[features'),
    (lambda sd: sd.update({'linear.weight': torch.randn(32, 10)}), CheckpointError,
     r'does not fit cifar_resnet32: .*1 with other shapes \[\'fc.weight\'\]'),
])
def test_malformed_official_files_get_one_clear_error(change, error, match, tmp_path):
    checkpoint = _official_cifar()
    change(checkpoint['state_dict'])
    with pytest.raises(error, match=match):
        create_eval_model('cifar_resnet32', _save(checkpoint, tmp_path / 'bad.pth.tar'))


def test_cosine_head_on_a_model_without_one_is_refused():
    with pytest.raises(CheckpointError, match='cosine .* only CIFAR and timm ResNet-family models take, not '
                                              'convnext_atto; pass --model'):
        create_eval_model('convnext_atto', OFFICIAL_CIFAR)


def test_num_classes_that_contradicts_the_head_is_refused():
    with pytest.raises(ValueError, match='--num-classes 100 but the classifier of .* has 10 classes'):
        create_eval_model('cifar_resnet32', OFFICIAL_CIFAR, num_classes=100)


# --- the ImageNet-family layout: fc_ stored [in, out] -------------------------------------------------------------

def _random_like_shape(key, shape):
    if key.endswith('num_batches_tracked'):
        return torch.tensor(1000)
    if key.endswith('running_var'):
        return torch.rand(shape) + 0.5
    return torch.randn(shape) * 0.05


def _official_imagenet_checkpoint(arch, num_classes):
    """An official-layout checkpoint of a timm ResNet: its backbone keys, the cosine head as fc_ [in, out]."""
    backbone = {k: _random_like_shape(k, v.shape) for k, v in timm.create_model(arch).state_dict().items()
                if not k.startswith('fc.')}
    in_features = backbone['layer4.1.bn2.weight'].numel() if arch == 'resnet18' else 2048
    return {'state_dict': {**backbone, 'fc_.weight': torch.randn(in_features, num_classes)}, 'epoch': 90,
            'optimizer': {'state': {}, 'param_groups': []}}


def _manifest_checkpoint(arch):
    manifest = json.loads(open(MANIFESTS).read())[arch]
    state_dict = {k: _random_like_shape(k, shape) for k, shape in manifest['state_dict'].items()}
    return {'state_dict': state_dict, 'epoch': 90}, manifest['num_classes']


def _assert_cosine_head_of(model, stored_weight):
    """The model's head computes normalize(x) . normalize(W) for the [in, out] weight the file stores."""
    head = model.get_classifier()
    assert isinstance(head, NormedLinear)
    assert head.out_features == stored_weight.shape[1] != stored_weight.shape[0]  # a transpose cannot pass
    x = torch.randn(4, stored_weight.shape[0])
    expected = F.normalize(x, dim=1) @ F.normalize(stored_weight, dim=0)
    with torch.no_grad():
        torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('model_name', ['resnet18', 'rsg_resnet18'])
def test_official_fc_head_loads_into_a_timm_resnet(model_name, tmp_path):
    checkpoint = _official_imagenet_checkpoint('resnet18', 13)
    checkpoint['state_dict'] = {f'module.{k}': v for k, v in checkpoint['state_dict'].items()}
    model, _, _ = create_eval_model(model_name, _save(checkpoint, tmp_path / 'official.pth'))
    assert model.num_classes == 13  # from the head, without --num-classes
    torch.testing.assert_close(model.conv1.weight, checkpoint['state_dict']['module.conv1.weight'])
    _assert_cosine_head_of(model, checkpoint['state_dict']['module.fc_.weight'])


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['resnext50_32x4d', 'resnet152', 'resnet50'])
@pytest.mark.parametrize('rsg', [False, True], ids=['plain', 'rsg'])
def test_official_imagenet_family_manifests_load(arch, rsg, tmp_path):
    checkpoint, num_classes = _manifest_checkpoint(arch)
    model, _, _ = create_eval_model(f'rsg_{arch}' if rsg else arch, _save(checkpoint, tmp_path / 'official.pth'))
    assert model.num_classes == num_classes
    for key in ('conv1.weight', 'layer3.0.conv2.weight', 'layer4.2.bn3.running_var'):
        torch.testing.assert_close(model.state_dict()[key], checkpoint['state_dict'][key])
    _assert_cosine_head_of(model, checkpoint['state_dict']['fc_.weight'])
