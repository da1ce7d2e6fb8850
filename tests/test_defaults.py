"""train.py's defaults and log: the recipe follows the classifier head, a diverging run stops with its likely cause,
the help shows defaults, and the log reads CE first with progress and the resolved configuration."""
import logging
import re

import pytest
import timm
import torch

from rsg_timm.engine import DIVERGED_CE, DivergedError, check_divergence, train_one_epoch

from rsg_timm.models import has_cosine_classifier
from rsg_timm.recipes import resolve_recipe
from rsg_timm.train_flags import FlagKind, build_train_parser, flag_names
from helpers import load_script

train_script = load_script('train.py')


def _resolved(*argv):
    args = train_script._parse_args(list(argv))
    resolve_recipe(args)
    return args


@pytest.mark.parametrize('argv,loss,reweight,cosine', [
    (['--model', 'rsg_resnet32'], 'ldam', 'drw', True),  # the CIFAR recipe where its cosine head is used
    (['--model', 'cifar_resnet20'], 'ldam', 'drw', True),
    (['--model', 'rsg_resnet18'], 'ce', 'none', False),  # a linear head: LDAM's s = 30 would diverge
    (['--model', 'resnet18'], 'ce', 'none', False),
    (['--model', 'rsg_resnet32', '--no-cosine-classifier'], 'ce', 'none', False),  # keyed off the head, not the name
    (['--model', 'rsg_resnet32', '--loss', 'focal'], 'focal', 'none', False),
    (['--model', 'rsg_resnet32', '--reweight', 'cb'], 'ldam', 'cb', True),
])
def test_loss_follows_the_classifier_head(argv, loss, reweight, cosine):
    args = _resolved(*argv)
    assert (args.loss, args.reweight, args.cosine_classifier) == (loss, reweight, cosine)


def test_create_model_builds_the_linear_head_the_train_recipe_replaces():
    # the README's Python example says so: timm's create_model gives a linear head, train.py's recipe a cosine one
    assert not has_cosine_classifier(timm.create_model('rsg_resnet32', num_classes=10))
    assert has_cosine_classifier(timm.create_model('rsg_resnet32', num_classes=10, use_norm=True))
    assert _resolved('--model', 'rsg_resnet32').cosine_classifier


def test_warmup_longer_than_the_run_is_scaled():
    assert _resolved('--epochs', '2').warmup_epochs == 0
    assert _resolved('--epochs', '10', '--warmup-epochs', '12').warmup_epochs == 2
    assert _resolved('--epochs', '30').warmup_epochs == 4


def test_unknown_model_is_one_line_with_close_matches():
    with pytest.raises(ValueError, match=r"^Unknown model 'resnet5O'; close matches: .*resnet50"):
        _resolved('--model', 'resnet5O')


def test_rsg_of_a_family_without_an_adapter_names_the_supported_ones():
    match = (r"^rsg_vit_small_patch16_224: RSG supports these families: CifarResNet, ResNet, ConvNeXt, RegNet, "
             r"EfficientNet, MobileNetV3, ResNetV2 \(\d+ archs, timm.list_models\('rsg_\*'\)\); vit_small_patch16_224 is a "
             r"VisionTransformer, .* --model vit_small_patch16_224$")
    with pytest.raises(ValueError, match=match):
        _resolved('--model', 'rsg_vit_small_patch16_224')  # train.py
    with pytest.raises(ValueError, match=match):
        load_script('validate.py').main(['--model', 'rsg_vit_small_patch16_224', '--dataset', 'demo'])
    with pytest.raises(ValueError, match='^Unknown model'):
        _resolved('--model', 'rsg_nope_net')  # not a timm arch at all: the close-match hint


def test_help_lists_config_defaults_and_every_rsg_flag():
    text = build_train_parser().format_help()
    assert '--config FILE' in text and '(default: 0.1)' in text  # --lr
    assert '--no-progress' in text and '(default: False)' in text
    for section in text.split('\n\n'):
        if section.startswith('RSG parameters'):
            flags = re.split(r'\n  (?=--)', section)[1:]
            assert len(flags) == len(flag_names(FlagKind.RSG)) and all('default' in f for f in flags), flags


def test_check_divergence_names_the_cause():
    check_divergence(0, train_ce=DIVERGED_CE - 1, eval_loss=6009.0)  # early BN statistics can do that to eval
    with pytest.raises(DivergedError, match='epoch 3: mean CE 853 .*linear head'):
        check_divergence(3, train_ce=853.0, eval_loss=2.0, hint='linear head')


def test_ldam_on_a_linear_head_stops_with_the_cause(tiny_demo, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    argv = ['--data-dir', tiny_demo, '--output', str(tmp_path), '--experiment', 'run', '--model', 'cifar_resnet20',
            '--no-cosine-classifier', '--loss', 'ldam', '-b', '32', '--epochs', '2', '--warmup-epochs', '0',
            '--no-progress', '--log-interval', '0']
    with pytest.raises(DivergedError, match='at epoch 0: .*--loss ldam multiplies the logits by s = 30.*linear head'):
        train_script.main(argv)
    log = caplog.text
    assert 'loss       ldam (s 30, margin 0.5); re-weighting drw from epoch 1' in log  # the resolved recipe block
    assert 'device     cpu x 1' in log and 'linear classifier' in log
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith('epoch 0 '))
    assert line.startswith('epoch 0 (1/2, 0:00:') and 'ETA' in line
    assert ': ce 8' in line and 'cesc' not in line and 'generated' not in line  # a plain model: no RSG terms


def test_epoch_line_and_checkpoint_list_once(tiny_demo, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train_script.main(['--data-dir', tiny_demo, '--output', str(tmp_path), '--experiment', 'run', '-b', '32',
                       '--epochs', '2', '--no-progress', '--log-interval', '0', '--model', 'rsg_resnet20',
                       '--rsg-epoch-thresh', '0'])
    messages = [r.getMessage() for r in caplog.records]
    assert not any(m.startswith('Current checkpoints') for m in messages)
    assert sum(m.startswith('checkpoints (by top1): ') for m in messages) == 1
    epoch_lines = [m for m in messages if m.startswith('epoch ')]
    assert epoch_lines[0].endswith('[RSG CESC]') and epoch_lines[1].endswith('[RSG generation]')
    for line in epoch_lines:  # CE first, then RSG's weighted terms that sum with it to the total
        assert line.index(': ce ') < line.index('(cesc ') < line.index(', mv ') < line.index('; total ')
        assert 'generated/batch' in line
    assert any('RSG        after stage 2, head classes [0, 1]; CESC only through epoch 0' in m for m in messages)


def test_timed_progress_lines_without_a_terminal(caplog):
    caplog.set_level(logging.INFO, logger='rsg_timm.engine')
    model = timm.create_model('cifar_resnet20', num_classes=3)
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])) for _ in range(3)]
    kwargs = dict(epoch=4, device=torch.device('cpu'), log_interval=0, num_epochs=10)
    train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                    **kwargs)
    assert not caplog.records  # neither a step interval nor a time interval
    train_one_epoch(model, batches, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01),
                    log_seconds=1e-9, **kwargs)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith('train epoch 4 (5/10) step 1/3: ce ')
