"""What timm users see of the pretrained tags: the zoo's tags in timm.list_pretrained(), and every timm tag of a
backbone for its rsg_* model (loaded offline here by pointing a tag's cfg at a local file)."""
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

from rsg_timm.models import backbone_arch
from rsg_timm.models.pretrained import load_pretrained_tags


def test_list_pretrained_lists_every_zoo_tag():
    zoo = set(load_pretrained_tags())
    assert zoo and zoo <= set(timm.list_pretrained())
    assert set(timm.list_pretrained('*lt_r100*')) == {name for name in zoo if 'lt_r100' in name}
    assert set(timm.list_pretrained('cifar_resnet*')) == {name for name in zoo if name.startswith('cifar_resnet')}


def test_zoo_tags_leave_the_untagged_cfg_the_default():
    # a zoo checkpoint is trained for one dataset and head: it is asked for by its tag, never picked silently
    for arch in ('cifar_resnet20', 'cifar_resnet32'):
        assert get_pretrained_cfg(arch).tag is None
    with pytest.raises(RuntimeError, match='No pretrained weights exist for cifar_resnet32'):
        timm.create_model('cifar_resnet32', pretrained=True)


def _tags(arch):
    return [name.partition('.')[2] for name in get_arch_pretrained_cfgs(arch)]  # registration order: default first


def test_every_rsg_model_has_every_timm_tag_of_its_backbone():
    zoo = set(load_pretrained_tags())
    rsg_names = timm.list_models('rsg_*')
    assert len(rsg_names) > 300
    for name in rsg_names:
        arch = backbone_arch(name)
        backbone_tags = [t for t in _tags(arch) if f'{arch}.{t}' not in zoo]
        assert _tags(name) == backbone_tags, name  # the same tags, the same default
        for tag in backbone_tags:
            suffix = f'.{tag}' if tag else ''
            rsg_cfg, cfg = get_pretrained_cfg(name + suffix), get_pretrained_cfg(arch + suffix)
            assert (rsg_cfg.hf_hub_id, rsg_cfg.url, rsg_cfg.input_size, rsg_cfg.crop_pct, rsg_cfg.mean) == \
                (cfg.hf_hub_id, cfg.url, cfg.input_size, cfg.crop_pct, cfg.mean), name + suffix
    assert 'rsg_resnet152.tv_in1k' in timm.list_pretrained('rsg_resnet152.*')
    assert get_pretrained_cfg('rsg_resnet152.tv_in1k').hf_hub_id == 'timm/resnet152.tv_in1k'


def test_rsg_model_loads_the_backbone_weights_of_the_tag_asked_for(tmp_path):
    weights = timm.create_model('resnet18').state_dict()
    save_file(weights, str(tmp_path / 'resnet18_tv.safetensors'))
    model = timm.create_model('rsg_resnet18.tv_in1k', pretrained=True, num_classes=5,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / 'resnet18_tv.safetensors')))
    assert model.pretrained_cfg['tag'] == 'tv_in1k' and model.pretrained_cfg['crop_pct'] == 0.875
    for key in ('conv1.weight', 'layer3.1.bn2.running_var', 'layer4.1.conv2.weight'):
        torch.testing.assert_close(model.state_dict()[key], weights[key])
    assert model.num_classes == 5 and model.rsg.num_classes == 5  # a new head, a fresh RSG
    default = timm.create_model('rsg_resnet18')
    assert default.pretrained_cfg['tag'] == get_pretrained_cfg('resnet18').tag != 'tv_in1k'
