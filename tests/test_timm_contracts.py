"""timm's tooling contracts on our models: TorchScript, FX feature extraction, ``features_only`` and
``forward_intermediates``.

Users reach our models through timm's tools (``torch.jit.script`` for deployment, ``features_only`` and the FX
helpers for detection/segmentation necks), so each must give the eager model's numbers.
"""
import warnings

import pytest
import timm
import torch
from timm.models import create_feature_extractor, get_graph_node_names

from test_models import ALL_MODELS, CIFAR_MODELS, FAMILY_RSG_MODELS, _create, _input, _params


def _same_init(name, **kwargs):
    """``name`` built from a fixed seed, so two builds (plain and ``features_only``) hold the same weights."""
    torch.manual_seed(0)
    return _create(name, **kwargs).eval()


def _script(model):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit.script is deprecated, still what timm tests
        return torch.jit.script(model)


@pytest.mark.parametrize('name', CIFAR_MODELS)
def test_cifar_resnet_scripts(name):
    model = _create(name).eval()
    x = _input(model, name)
    scripted = _script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


def test_cifar_resnet_scripts_with_cosine_head_drop_path_and_checkpointing():
    """The zoo's LDAM models carry the cosine head; a checkpointing flag set for training must not stop scripting."""
    model = _create('cifar_resnet20', use_norm=True, drop_path_rate=0.1, drop_rate=0.2).eval()
    model.set_grad_checkpointing()
    x = _input(model, 'cifar_resnet20')
    scripted = _script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize('name', _params(ALL_MODELS))
def test_fx_feature_extraction_matches_eager(name):
    """timm's FX helpers trace train and eval mode; the eval graph's last node gives the model's logits and a
    stage node that stage's maps. An rsg_ model traces as its backbone (RSG needs label values)."""
    model = _create(name, num_classes=10).eval()
    x = _input(model, name)
    train_nodes, eval_nodes = get_graph_node_names(model)
    assert train_nodes == eval_nodes and not any(n.startswith('rsg.') for n in eval_nodes)
    stage = model.feature_info[-1]['module']
    extractor = create_feature_extractor(model, return_nodes={eval_nodes[-1]: 'logits', stage: 'features'}).eval()
    with torch.no_grad():
        out = extractor(x)
        torch.testing.assert_close(out['logits'], model(x), rtol=0, atol=0)
        last_stage = model.forward_intermediates(x, intermediates_only=True)[-1]
        torch.testing.assert_close(out['features'], last_stage, rtol=0, atol=0)


@pytest.mark.parametrize('name', ['rsg_resnet20', 'rsg_test_resnet'] + FAMILY_RSG_MODELS)
def test_features_only_and_forward_intermediates_agree(name):
    """One small arch per family: list, hook, getter and FX features and ``forward_intermediates`` give the same maps,
    and pruning to the first levels keeps them."""
    model = _same_init(name)
    x = _input(model, name)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        for feature_cls in ('list', 'hook', 'getter', 'fx'):
            features = _same_init(name, features_only=True, feature_cls=feature_cls)
            assert features.feature_info.channels() == [f['num_chs'] for f in model.feature_info]
            assert not any(n.startswith('rsg.') for n in features.state_dict()), feature_cls
            for got, expected in zip(features(x), intermediates, strict=True):
                torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=feature_cls)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last_two] == [t.shape for t in intermediates[-2:]]
        torch.testing.assert_close(last_two, intermediates[-2:], rtol=0, atol=0)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        _, pruned = model.forward_intermediates(x, indices=[0, 1])
        torch.testing.assert_close(pruned, intermediates[:2], rtol=0, atol=0)
