"""Export tests: strip_rsg, save_pretrained and the local-dir / hf-hub / plain-timm loading paths, all offline."""
import json
import os
import shutil

import pytest
import timm
import torch

from helpers import run_in_plain_timm
from rsg_timm.export import load_class_counts, save_pretrained, strip_rsg
from rsg_timm.models import CifarResNet

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained(name, **kwargs):
    """A model whose BN statistics are not the defaults, in eval mode."""
    model = timm.create_model(name, **kwargs).train()
    size = model.pretrained_cfg['input_size'][-1] if name != 'rsg_test_resnet' else 64
    with torch.no_grad():
        model(torch.randn(4, 3, size, size))
    return model.eval(), torch.randn(2, 3, size, size)


@pytest.mark.parametrize('name,kwargs', [
    ('rsg_resnet32', dict(use_norm=True)),
    ('rsg_resnet20', dict(num_classes=7, drop_rate=0.1)),
    ('rsg_test_resnet', dict(num_classes=5)),
])
def test_strip_rsg_same_logits(name, kwargs):
    model, x = _trained(name, **kwargs)
    backbone = strip_rsg(model)
    assert not any(k.startswith('rsg.') for k in backbone.state_dict())
    assert backbone.pretrained_cfg['architecture'] == model.backbone_name and not backbone.training
    torch.testing.assert_close(backbone(x), model(x), rtol=0, atol=0)
    assert strip_rsg(backbone) is backbone  # a plain backbone is already stripped


def test_strip_rsg_after_reset_classifier():
    model, x = _trained('rsg_resnet32')
    model.reset_classifier(4)
    torch.testing.assert_close(strip_rsg(model)(x), model(x))


def test_save_pretrained_local_dir(tmp_path):
    model, x = _trained('rsg_resnet32', use_norm=True)
    counts = [500, 300, 200, 100, 60, 40, 20, 10, 8, 5]
    model.set_class_counts(counts)
    names = [f'class_{i}' for i in range(10)]
    out = save_pretrained(model, tmp_path / 'export', label_names=names)
    assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']  # no temp files left
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == 'cifar_resnet32' and config['num_classes'] == 10
    assert config['label_names'] == names and config['model_args']['use_norm'] is True
    assert load_class_counts(out) == counts == load_class_counts(out / 'config.json') == load_class_counts(config)

    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert isinstance(loaded, CifarResNet) and loaded.pretrained_cfg['label_names'] == names
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    # explicit counts win, and a second export replaces the first in place
    save_pretrained(model, out, class_counts=list(range(10)))
    assert load_class_counts(out) == list(range(10))


def test_hf_hub_offline_cache(tmp_path):
    model, x = _trained('rsg_resnet20', num_classes=4)
    export = save_pretrained(model, tmp_path / 'export', class_counts=[40, 30, 20, 10])
    commit = '0123456789abcdef0123456789abcdef01234567'
    repo = tmp_path / 'hub' / 'models--me--rsg_resnet20.demo'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    shutil.copytree(export, repo / 'snapshots' / commit)
    loaded = timm.create_model('hf-hub:me/rsg_resnet20.demo', pretrained=True, cache_dir=tmp_path / 'hub').eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_imagenet_family_export_loads_without_rsg_timm(tmp_path):
    model, x = _trained('rsg_test_resnet', num_classes=5)
    export = save_pretrained(model, tmp_path / 'export')
    assert json.loads((export / 'config.json').read_text())['architecture'] == 'test_resnet'
    torch.save({'x': x, 'logits': model(x).detach()}, tmp_path / 'expected.pt')
    run_in_plain_timm(f'''
        model = timm.create_model('local-dir:{export}', pretrained=True).eval()
        expected = torch.load('{tmp_path / "expected.pt"}')
        torch.testing.assert_close(model(expected['x']), expected['logits'])
    ''', cwd=tmp_path)


def test_bad_input(tmp_path):
    model, _ = _trained('rsg_resnet20')
    with pytest.raises(ValueError, match='class_counts has 3 entries'):
        save_pretrained(model, tmp_path / 'a', class_counts=[1, 2, 3])
    with pytest.raises(ValueError, match='label_names has 2 entries'):
        save_pretrained(model, tmp_path / 'b', label_names=['cat', 'dog'])
    with pytest.raises(FileNotFoundError, match='config.json'):
        load_class_counts(tmp_path)
    # an export of another architecture, loaded as if it were this one
    other = save_pretrained(timm.create_model('cifar_resnet56'), tmp_path / 'other')
    with pytest.raises(RuntimeError, match='another architecture'):
        timm.create_model('cifar_resnet20', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(other / 'model.safetensors')))
