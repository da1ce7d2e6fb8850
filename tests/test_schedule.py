"""Every shipped recipe, built the way train.py builds it, follows the official scripts' schedule epoch by epoch.

The official formulas (``adjust_learning_rate`` of the RSG repository's training scripts) take the 0-based epoch
``e`` and test ``e + 1``: CIFAR drops x0.01 once ``e + 1 > 159`` and x1e-4 once ``e + 1 > 179``, so the first
reduced epoch is 159, not 160. timm's multistep scheduler applies milestone ``m`` from epoch ``m - 1``; a recipe
that wrote the official numbers as milestones would drop every rate one epoch early, which these tests catch.
"""
import glob
import logging
import os
from typing import Callable, Dict

import numpy as np
import pytest
import torch

from rsg_timm.recipes import create_lr_scheduler, create_recipe_model, rescale_schedule, resolve_recipe, \
    scaled_schedule
from helpers import REPO_DIR, load_script
from rsg_timm.losses import create_reweight

train = load_script('train.py')
# The paper's recipes; the folder_lt_finetune_* recipes are not the paper's (tests/test_families.py checks them).
CONFIGS = sorted(c for c in glob.glob(os.path.join(REPO_DIR, 'configs', '*.yaml'))
                 if not os.path.basename(c).startswith('folder_lt_finetune_'))
CIFAR10_LT_R100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _official(base: float, drops: Dict[int, float], warmup: bool) -> Callable[[int], float]:
    """The official rule: ``drops`` maps a 1-based epoch bound to a factor applied once ``epoch + 1 > bound``."""
    def lr(epoch: int) -> float:
        e = epoch + 1
        for bound in sorted(drops, reverse=True):
            if e > bound:
                return base * drops[bound]
        return base * e / 5 if warmup and e <= 5 else base
    return lr


OFFICIAL = {  # recipe family -> (first DRW / re-sampling epoch, first generation epoch, lr rule)
    'cifar': (160, 160, _official(0.1, {159: 0.01, 179: 0.0001}, warmup=True)),
    'imagenet_lt': (80, 80, _official(0.1, {59: 0.1, 79: 0.01, 94: 0.001}, warmup=True)),
    'places_lt': (10, 10, _official(0.01, {9: 0.1, 19: 0.01}, warmup=False)),
    'inat2018': (140, 140, _official(0.1, {99: 0.1, 139: 0.01, 169: 0.001}, warmup=True)),
}


def _family(config: str) -> str:
    name = os.path.basename(config)
    return 'cifar' if name.startswith('cifar') else next(k for k in OFFICIAL if name.startswith(k))


def _resolved(*argv: str):
    """A config path alone, or train.py flags."""
    args = train._parse_args(['--config', *argv] if len(argv) == 1 else list(argv))
    resolve_recipe(args)
    return args


def _lr_per_epoch(args, start_epoch: int = 0, updates_per_epoch: int = 7) -> list:
    """The rate each epoch trains at, stepping the scheduler exactly as train.py's loop (and its resume) does."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr, momentum=args.momentum)
    scheduler, num_epochs = create_lr_scheduler(args, optimizer, updates_per_epoch)
    if start_epoch:
        scheduler.step(start_epoch)
    rates = []
    for epoch in range(start_epoch, num_epochs):
        scheduler.step_update(num_updates=(epoch + 1) * updates_per_epoch)
        rates.append(optimizer.param_groups[0]['lr'])
        scheduler.step(epoch + 1, 0.0)
    return rates


def test_every_shipped_recipe_is_checked():
    assert len(CONFIGS) == 75 and {_family(c) for c in CONFIGS} == set(OFFICIAL)


@pytest.mark.parametrize('config', CONFIGS, ids=os.path.basename)
def test_learning_rate_of_every_epoch_matches_the_official_formula(config):
    args = _resolved(config)
    official = OFFICIAL[_family(config)][2]
    rates = _lr_per_epoch(args)
    assert len(rates) == args.epochs
    expected = [official(e) for e in range(args.epochs)]
    wrong = [(e, got, want) for e, (got, want) in enumerate(zip(rates, expected)) if not np.isclose(got, want)]
    assert not wrong, f'{os.path.basename(config)}: (epoch, ours, official) {wrong[:5]}'


@pytest.mark.parametrize('config', CONFIGS, ids=os.path.basename)
def test_phase_switches_match_the_official_epochs(config):
    args = _resolved(config)
    first_late, first_generation, _ = OFFICIAL[_family(config)]
    if args.model.startswith('rsg_'):  # generation runs for epoch > epoch_thresh
        assert args.rsg_epoch_thresh + 1 == first_generation
    if args.reweight == 'drw':
        assert args.drw_epoch == first_late
    if args.sampler == 'deferred':
        assert args.drs_epoch == first_late


def test_drw_switches_from_uniform_to_class_balanced_at_epoch_160():
    args = _resolved(os.path.join(REPO_DIR, 'configs', 'cifar10_lt_r100_ldam_drw_rsg.yaml'))
    reweight = create_reweight(args.reweight, CIFAR10_LT_R100, beta=args.cb_beta, drw_epoch=args.drw_epoch)
    assert reweight.weight_for_epoch(159) is None
    beta = 0.9999  # the official DRW: per-class (1 - beta) / (1 - beta^n), normalised to sum to the class count
    expected = (1 - beta) / (1 - np.power(beta, CIFAR10_LT_R100))
    expected = expected / expected.sum() * len(CIFAR10_LT_R100)
    np.testing.assert_allclose(reweight.weight_for_epoch(160).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(reweight.weight_for_epoch(199).numpy(), expected, rtol=1e-6)


def test_rsg_model_first_generates_at_epoch_160():
    args = _resolved(os.path.join(REPO_DIR, 'configs', 'cifar10_lt_r100_ldam_drw_rsg.yaml'))
    model = create_recipe_model(args, 10, CIFAR10_LT_R100).train()
    images, target = torch.randn(16, 3, 32, 32), torch.arange(16) % 10  # head (0, 1) and tail classes
    model.set_epoch(159)
    assert model(images, target=target).logits.shape[0] == 16
    model.set_epoch(160)
    assert model(images, target=target).logits.shape[0] > 16


def test_resumed_schedule_continues_the_straight_one():
    args = _resolved(os.path.join(REPO_DIR, 'configs', 'cifar10_lt_r100_ldam_drw_rsg.yaml'))
    assert _lr_per_epoch(args, start_epoch=160) == _lr_per_epoch(args)[160:]


def test_default_scaling_is_the_official_schedule_at_200_epochs():
    args = train._parse_args(['--epochs', '200'])
    resolve_recipe(args)
    assert (args.decay_milestones, args.drw_epoch, args.rsg_epoch_thresh) == ([160, 180], 160, 159)
    assert _lr_per_epoch(args) == pytest.approx([OFFICIAL['cifar'][2](e) for e in range(200)])


# -------------------------------------------------------------------------- switches of a shorter or longer run

def test_config_switches_scale_with_epochs_as_the_defaults_do():
    # The CIFAR recipes write the official 200-epoch switches; at any other length they land where the defaults put
    # them, e.g. 4 epochs: LR decay, DRW and generation from epoch 3 instead of never.
    cifar = dict(decay_milestones=[160, 180], drw_epoch=160, drs_epoch=160, rsg_epoch_thresh=159)
    for epochs in range(1, 401):
        assert rescale_schedule(cifar, 200, epochs) == scaled_schedule(epochs), epochs
    config = os.path.join(REPO_DIR, 'configs', 'cifar10_lt_r100_ldam_drw_rsg.yaml')
    args = _resolved('--config', config, '--epochs', '4')
    assert (args.decay_milestones, args.drw_epoch, args.rsg_epoch_thresh) == ([3, 3], 3, 2)
    assert _resolved('--config', config, '--epochs', '200').rsg_epoch_thresh == 159
    # a switch given on the command line is kept as given
    assert _resolved('--config', config, '--epochs', '4', '--drw-epoch', '1').drw_epoch == 1
    assert rescale_schedule(dict(rsg_epoch_thresh=-1), 200, 4) == dict(rsg_epoch_thresh=-1)  # generation throughout


def test_finetune_config_reaches_generation_and_resampling_in_a_short_run(caplog):
    config = os.path.join(REPO_DIR, 'configs', 'folder_lt_finetune_convnext_rsg.yaml')
    with caplog.at_level(logging.WARNING):
        args = _resolved('--config', config, '--epochs', '4', '--data-dir', 'DIR')
    assert (args.drs_epoch, args.rsg_epoch_thresh) == (3, 2)  # the config's 24 / 23 of 30
    assert 'never starts' not in caplog.text


def test_a_late_phase_out_of_reach_is_warned(caplog):
    config = os.path.join(REPO_DIR, 'configs', 'folder_lt_finetune_convnext_rsg.yaml')
    with caplog.at_level(logging.WARNING):
        _resolved('--config', config, '--epochs', '4', '--data-dir', 'DIR', '--drs-epoch', '24',
                  '--rsg-epoch-thresh', '3')
        _resolved('--model', 'rsg_resnet32', '--epochs', '5', '--drw-epoch', '5')
    warnings = [r.getMessage() for r in caplog.records if 'never starts' in r.getMessage()]
    assert warnings == [
        'RSG generation never starts: it would from epoch 4, but the run trains epochs 0-3; lower --rsg-epoch-thresh '
        '(3)',
        'deferred re-sampling never starts: it would from epoch 24, but the run trains epochs 0-3; lower --drs-epoch '
        '(24)',
        'DRW re-weighting never starts: it would from epoch 5, but the run trains epochs 0-4; lower --drw-epoch (5)']
