"""What a run starts from, as timm's train.py takes it: ``--pretrained`` / ``--no-pretrained``, ``--pretrained-path``
and ``--initial-checkpoint``; a pretrained download that fails offline is one line naming the ways out, and a
resumed run (whose every weight is restored) reads none of them."""
import os

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from rsg_timm.constants import RSG_KEY_PREFIX
from rsg_timm.recipes import create_recipe_model, resolve_recipe
from helpers import REPO_DIR, load_script

train_script = load_script('train.py')
COUNTS = [5, 4, 3, 2, 1]
FINETUNE = os.path.join(REPO_DIR, 'configs', 'folder_lt_finetune_convnext_rsg.yaml')


def _model(*argv, **kwargs):
    args = train_script._parse_args(list(argv))
    resolve_recipe(args)
    return create_recipe_model(args, len(COUNTS), COUNTS, **kwargs)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """No cached weights, whatever this machine has downloaded (the suite runs with HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))


def test_no_pretrained_overrides_a_config(tmp_path):
    assert train_script._parse_args(['--config', FINETUNE]).pretrained is True
    assert train_script._parse_args(['--config', FINETUNE, '--no-pretrained']).pretrained is False


def test_offline_download_failure_is_one_line_naming_the_ways_out(empty_hub_cache):
    with pytest.raises(ValueError, match=r'^--pretrained: the weights of convnext_atto could not be downloaded .*'
                                         r'--pretrained-path FILE .*--no-pretrained') as error:
        _model('--model', 'rsg_convnext_atto', '--pretrained')
    assert '\n' not in str(error.value)


def test_a_resumed_model_reads_no_start_weights(empty_hub_cache):
    model = _model('--model', 'rsg_convnext_atto', '--pretrained', '--initial-checkpoint', 'missing.pth',
                   start_weights=False)
    assert model.num_classes == len(COUNTS)


def test_pretrained_path_loads_the_file_and_drops_a_classifier_of_another_size(tmp_path, empty_hub_cache):
    source = timm.create_model('cifar_resnet32', num_classes=7, use_norm=True)  # rsg_resnet32's cosine head
    weights = {k: v + 1.0 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    save_file({k: v.contiguous() for k, v in weights.items()}, tmp_path / 'model.safetensors')
    model = _model('--model', 'rsg_resnet32', '--pretrained-path', str(tmp_path / 'model.safetensors'))
    loaded = model.state_dict()
    torch.testing.assert_close(loaded['layer1.0.conv1.weight'], weights['layer1.0.conv1.weight'])
    torch.testing.assert_close(loaded['bn1.running_var'], weights['bn1.running_var'])
    assert model.num_classes == len(COUNTS)  # the 7-class classifier was dropped
    with pytest.raises(FileNotFoundError, match='--pretrained-path .* does not exist'):
        _model('--model', 'rsg_resnet32', '--pretrained-path', str(tmp_path / 'missing.safetensors'))


def test_initial_checkpoint_loads_every_weight_and_starts_rsg_fresh(tmp_path):
    plain = _model('--model', 'cifar_resnet32')
    torch.nn.init.constant_(plain.bn1.weight, 0.5)
    torch.save({'state_dict': plain.state_dict()}, tmp_path / 'plain.pth')
    torch.manual_seed(1)
    model = _model('--model', 'rsg_resnet32', '--initial-checkpoint', str(tmp_path / 'plain.pth'))
    torch.manual_seed(1)
    fresh = _model('--model', 'rsg_resnet32')
    for k, v in model.state_dict().items():
        expected = fresh.state_dict()[k] if k.startswith(RSG_KEY_PREFIX) else plain.state_dict()[k]
        torch.testing.assert_close(v, expected, msg=k)
    with pytest.raises(Exception, match='--initial-checkpoint .* does not fit'):
        _model('--model', 'rsg_resnet20', '--initial-checkpoint', str(tmp_path / 'plain.pth'))
