"""The cosine (LDAM) classifier on timm ResNet-family models: train.py's choice of it, training with LDAM, and
exports that give the same logits with rsg_timm and the same predictions in plain timm."""
import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from rsg_timm.recipes import create_recipe_model, resolve_recipe
from helpers import load_script, run_in_plain_timm
from rsg_timm.checkpoint import checkpoint_extras
from rsg_timm.eval_model import create_eval_model
from rsg_timm.export import save_pretrained, strip_rsg
from rsg_timm.losses import create_loss
from rsg_timm.models import CosineHead, NormedLinear, arch_cosine_head, cosine_to_linear, has_cosine_classifier, \
    linear_to_cosine, model_cosine_head, set_cosine_classifier, supports_cosine_classifier

train = load_script('train.py')
COUNTS = [40, 20, 10, 5, 3]


def _train_model(flags):
    args = train._parse_args(flags)
    resolve_recipe(args)
    return create_recipe_model(args, len(COUNTS), COUNTS)


def _trained(name: str, size: int = 64, **kwargs):
    """A cosine-head model after one LDAM step in the generation phase (RSG models), in eval mode."""
    model = timm.create_model(name, num_classes=len(COUNTS), **kwargs)
    set_cosine_classifier(model)
    if hasattr(model, 'set_class_counts'):
        model.set_class_counts(COUNTS)
        model.set_epoch(model.rsg.epoch_thresh + 1)
    criterion = create_loss('ldam', class_counts=COUNTS, max_m=0.3, s=30.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 3, size, size), torch.tensor([0, 0, 0, 1, 1, 2, 3, 4])
    model.train()
    out = model(x, target=y) if hasattr(model, 'rsg') else model(x)
    if hasattr(model, 'rsg'):
        loss = criterion(out.logits, out.target) + sum(out.aux_losses.values())
    else:
        loss = criterion(out, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    # BN statistics of this batch, so that eval activations stay finite in a 152-layer net without zero-init
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model(x)
    return model.eval(), torch.randn(3, 3, size, size)


@pytest.mark.parametrize('name', ['test_resnet', 'rsg_test_resnet', 'rsg_seresnext26d_32x4d'])
def test_ldam_picks_the_cosine_head_for_timm_resnets(name):
    assert isinstance(_train_model(['--model', name, '--loss', 'ldam']).fc, NormedLinear)
    assert isinstance(_train_model(['--model', name, '--loss', 'ce', '--cosine-classifier']).fc, NormedLinear)
    assert isinstance(_train_model(['--model', name, '--loss', 'ldam', '--no-cosine-classifier']).fc, nn.Linear)
    assert isinstance(_train_model(['--model', name, '--loss', 'ce']).fc, nn.Linear)


def test_cosine_head_refused_where_no_family_has_one():
    assert not supports_cosine_classifier('test_convnext')
    with pytest.raises(ValueError, match='CIFAR and timm ResNet families, not test_convnext'):
        _train_model(['--model', 'test_convnext', '--loss', 'ce', '--cosine-classifier'])
    assert isinstance(_train_model(['--model', 'test_convnext', '--loss', 'ldam']).get_classifier(), nn.Linear)
    with pytest.raises(TypeError, match='use_norm=True'):
        set_cosine_classifier(timm.create_model('cifar_resnet20'))


@pytest.mark.parametrize('name, head', [
    ('cifar_resnet32', CosineHead.USE_NORM), ('rsg_resnet32.ldam_drw_rsg_cifar10_lt_r100', CosineHead.USE_NORM),
    ('test_resnet', CosineHead.SWAP), ('rsg_seresnext26d_32x4d', CosineHead.SWAP), ('test_convnext', None),
    ('rsg_test_convnext', None), ('no_such_model', None),
])
def test_one_rule_says_how_an_arch_builds_a_cosine_head(name, head):
    assert arch_cosine_head(name) is head
    assert supports_cosine_classifier(name) == (head is not None)


def test_one_rule_says_how_a_model_s_cosine_head_is_rebuilt():
    assert model_cosine_head(timm.create_model('rsg_resnet32', num_classes=5, use_norm=True)) is CosineHead.USE_NORM
    assert model_cosine_head(timm.create_model('rsg_resnet32', num_classes=5)) is None
    assert model_cosine_head(set_cosine_classifier(timm.create_model('rsg_test_resnet', num_classes=5))) \
        is CosineHead.SWAP
    assert model_cosine_head(timm.create_model('test_resnet', num_classes=5)) is None
    assert model_cosine_head(timm.create_model('test_convnext', num_classes=5)) is None


def test_cosine_head_starts_with_unit_class_vectors_as_ldam():
    model = set_cosine_classifier(timm.create_model('test_resnet', num_classes=len(COUNTS)))
    norms = model.fc.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert model.fc.weight.abs().max() <= 1 and model.fc.weight.std() > 0.1  # uniform(-1, 1), then renormalised


def test_cosine_logits_and_reset_classifier():
    model, x = _trained('rsg_test_resnet')
    logits = model(x)
    assert logits.abs().max() <= 1 + 1e-5  # cosine similarities
    model.reset_classifier(3)
    assert isinstance(model.fc, NormedLinear) and model.fc.out_features == 3 and model.rsg.num_classes == 3


def test_linear_form_scales_logits_by_the_feature_norm():
    model, x = _trained('test_resnet')
    cosine_logits = model(x)
    feature_norm = model.forward_head(model.forward_features(x), pre_logits=True).norm(dim=1, keepdim=True)
    cosine_to_linear(model)
    assert type(model.fc) is nn.Linear and not model.fc.bias.any()
    torch.testing.assert_close(model(x), cosine_logits * feature_norm)
    linear_to_cosine(model)
    torch.testing.assert_close(model(x), cosine_logits)
    with torch.no_grad():
        cosine_to_linear(model).fc.bias.fill_(0.5)
    with pytest.raises(ValueError, match='non-zero bias'):
        linear_to_cosine(model)


@pytest.mark.parametrize('name', ['rsg_test_resnet', 'test_resnet'])
def test_cosine_export_and_checkpoint_give_the_same_logits_with_rsg_timm(tmp_path, name):
    model, x = _trained(name)
    expected = model(x)
    backbone = strip_rsg(model)
    assert isinstance(backbone.fc, NormedLinear)
    torch.testing.assert_close(backbone(x), expected, rtol=0, atol=0)

    export = save_pretrained(model, tmp_path / 'export', class_counts=COUNTS)
    config = json.loads((export / 'config.json').read_text())
    assert config['architecture'] == 'test_resnet' and config['cosine_classifier'] is True
    assert has_cosine_classifier(model)  # exporting leaves the trained model as it was
    loaded, counts, _ = create_eval_model(f'local-dir:{export}')
    assert isinstance(loaded.fc, NormedLinear) and counts == COUNTS
    torch.testing.assert_close(loaded.eval()(x), expected)

    # a training checkpoint (what train.py's saver writes) into the RSG model and into its plain backbone
    torch.save(dict(state_dict=model.state_dict(), **checkpoint_extras(model, COUNTS, None)), tmp_path / 'last.pth')
    for eval_name in {name, 'test_resnet'}:
        loaded, _, _ = create_eval_model(eval_name, checkpoint_path=str(tmp_path / 'last.pth'))
        torch.testing.assert_close(loaded.eval()(x), expected, rtol=0, atol=0)


def test_cosine_export_loads_in_plain_timm_with_the_same_predictions(tmp_path):
    model, x = _trained('rsg_test_resnet')
    cosine_logits = model(x)
    feature_norm = model.forward_head(model.forward_features(x), pre_logits=True).norm(dim=1, keepdim=True)
    export = save_pretrained(model, tmp_path / 'export')
    torch.save({'x': x, 'scaled': cosine_logits * feature_norm, 'argmax': cosine_logits.argmax(1)},
               tmp_path / 'expected.pt')
    run_in_plain_timm(f'''
        model = timm.create_model('local-dir:{export}', pretrained=True).eval()
        expected = torch.load('{tmp_path / "expected.pt"}')
        logits = model(expected['x'])
        assert type(model.fc) is torch.nn.Linear, type(model.fc)
        assert torch.equal(logits.argmax(1), expected['argmax'])
        torch.testing.assert_close(logits, expected['scaled'])  # cosine logits times the feature norm
    ''', cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['rsg_resnext50_32x4d', 'rsg_resnet50', 'rsg_resnet152'])
def test_ldam_cosine_trains_and_exports_for_the_paper_backbones(tmp_path, name):
    model, x = _trained(name, size=64, zero_init_last=False, rsg_init='backbone')
    expected = model(x)
    export = save_pretrained(model, tmp_path / 'export', class_counts=COUNTS)
    loaded, _, _ = create_eval_model(f'local-dir:{export}')
    torch.testing.assert_close(loaded.eval()(x), expected)
    plain = timm.create_model(f'local-dir:{export}', pretrained=True).eval()
    assert type(plain.fc) is nn.Linear and torch.equal(plain(x).argmax(1), expected.argmax(1))
    assert F.normalize(plain.fc.weight, dim=1).allclose(plain.fc.weight)
