"""Loss and re-weighting registry: reference vectors (the papers' definitions) and hand-computed losses."""
import argparse
import math
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import REPO_DIR, package_sources
from rsg_timm.losses import (
    LDAM_DEFAULT_S, LDAMLoss, create_loss, create_reweight, effective_number_weights, ldam_margins, list_losses,
    list_reweights,
    log_prior, loss_kwargs, register_loss, register_reweight,
)

CIFAR10_LT_R100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CB_REFERENCE = [0.051, 0.077, 0.121, 0.195, 0.319, 0.525, 0.868, 1.443, 2.409, 3.993]
LDAM_REFERENCE = [0.158, 0.180, 0.204, 0.232, 0.264, 0.300, 0.341, 0.387, 0.440, 0.500]
COUNT_LOSSES = ('ldam', 'balanced_softmax', 'logit_adjusted')


def _batch(b=8, c=10):
    return torch.randn(b, c), torch.randint(0, c, (b,))


def test_effective_number_reference():
    w = effective_number_weights(CIFAR10_LT_R100, beta=0.9999)
    torch.testing.assert_close(w, torch.tensor(CB_REFERENCE), atol=5e-4, rtol=0)
    assert w.sum().item() == pytest.approx(10.0, abs=1e-4)
    torch.testing.assert_close(effective_number_weights(CIFAR10_LT_R100, beta=0.0), torch.ones(10))


def test_ldam_margins_reference():
    torch.testing.assert_close(ldam_margins(CIFAR10_LT_R100), torch.tensor(LDAM_REFERENCE), atol=5e-4, rtol=0)


def test_registry_contents_and_errors():
    assert list_losses() == ['balanced_softmax', 'ce', 'focal', 'ldam', 'logit_adjusted']
    assert list_reweights() == ['cb', 'drw', 'none']
    with pytest.raises(ValueError, match='balanced_softmax, ce, focal, ldam, logit_adjusted'):
        create_loss('cross_entropy')
    with pytest.raises(ValueError, match='cb, drw, none'):
        create_reweight('inverse', CIFAR10_LT_R100)
    with pytest.raises(ValueError, match='already registered'):
        register_loss('ce')(nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match='already registered'):
        register_reweight('drw')(object)
    with pytest.raises(TypeError):
        create_loss('ce', gamma=2.0)  # a typo'd / misplaced kwarg must not pass silently
    with pytest.raises(ValueError, match='class_counts must be positive'):
        create_loss('ldam', class_counts=[10, 0, 3])


@pytest.mark.parametrize('name', COUNT_LOSSES)
def test_missing_class_counts(name):
    with pytest.raises(ValueError, match='needs class_counts'):
        create_loss(name)


@pytest.mark.parametrize('name', ['cb', 'drw'])
def test_reweight_missing_class_counts(name):
    with pytest.raises(ValueError, match='needs class_counts'):
        create_reweight(name)


def test_create_loss_passthrough():
    module = nn.CrossEntropyLoss()
    assert create_loss(module) is module
    assert isinstance(create_loss(nn.CrossEntropyLoss, label_smoothing=0.1), nn.CrossEntropyLoss)


def test_loss_kwargs_from_args():
    args = argparse.Namespace(loss='ldam', ldam_max_m=0.3, ldam_s=None, focal_gamma=2.0, la_tau=1.5)
    assert loss_kwargs(args) == {'max_m': 0.3}
    args.loss = 'focal'
    assert loss_kwargs(args) == {'gamma': 2.0}
    args.loss = 'logit_adjusted'
    assert create_loss(args.loss, class_counts=CIFAR10_LT_R100, **loss_kwargs(args)).tau == 1.5
    args.loss = 'ce'
    assert loss_kwargs(args) == {}


def test_ce_matches_torch_with_weight():
    logits, target = _batch()
    w = torch.rand(10) + 0.5
    loss = create_loss('ce', class_counts=CIFAR10_LT_R100)
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(logits, target))
    loss.set_class_weight(w)
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(logits, target, weight=w))
    loss.set_class_weight(None)
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(logits, target))


def test_focal_hand_computed():
    logits, target = _batch()
    w = torch.rand(10) + 0.5
    torch.testing.assert_close(create_loss('focal', gamma=0.0)(logits, target), F.cross_entropy(logits, target))
    loss = create_loss('focal', gamma=2.0, weight=w)
    ce = F.cross_entropy(logits, target, weight=w, reduction='none')
    expected = ((1 - torch.exp(-ce)) ** 2 * ce).mean()  # plain mean, as LDAM-DRW's focal_loss
    torch.testing.assert_close(loss(logits, target), expected)
    assert create_loss('focal').gamma == 1.0


def test_ldam_hand_computed():
    logits, target = _batch()
    w = torch.rand(10) + 0.5
    loss = create_loss('ldam', class_counts=CIFAR10_LT_R100, weight=w)
    margins = ldam_margins(CIFAR10_LT_R100)
    margined = logits.clone()
    for i, y in enumerate(target.tolist()):
        margined[i, y] -= margins[y]  # target logit only
    expected = F.cross_entropy(30.0 * margined, target, weight=w)
    torch.testing.assert_close(loss(logits, target), expected)
    # probability targets: one-hot gives the hard-label loss
    soft = F.one_hot(target, 10).float()
    torch.testing.assert_close(create_loss('ldam', class_counts=CIFAR10_LT_R100)(logits, soft),
                               F.cross_entropy(30.0 * margined, target))


def test_balanced_softmax_equals_logit_adjusted_tau1():
    logits, target = _batch()
    bs = create_loss('balanced_softmax', class_counts=CIFAR10_LT_R100)
    la = create_loss('logit_adjusted', class_counts=CIFAR10_LT_R100)
    counts = torch.tensor(CIFAR10_LT_R100, dtype=torch.float32)
    torch.testing.assert_close(bs(logits, target), F.cross_entropy(logits + counts.log(), target))
    torch.testing.assert_close(la(logits, target), bs(logits, target))
    prior = counts / counts.sum()
    la2 = create_loss('logit_adjusted', class_counts=CIFAR10_LT_R100, tau=2.0)
    torch.testing.assert_close(la2(logits, target), F.cross_entropy(logits + torch.log(prior ** 2 + 1e-12), target))


def test_log_prior_reference_form():
    prior = log_prior([3, 1, 0], tau=1.0)
    torch.testing.assert_close(prior, torch.tensor([math.log(0.75 + 1e-12), math.log(0.25 + 1e-12), math.log(1e-12)]))


@pytest.mark.parametrize('name', ['ce', 'focal'] + list(COUNT_LOSSES))
def test_bf16_autocast_float32_and_grad(name):
    loss_fn = create_loss(name, class_counts=CIFAR10_LT_R100, weight=torch.rand(10) + 0.5)
    x = torch.randn(8, 16)
    fc = nn.Linear(16, 10)
    target = torch.randint(0, 10, (8,))
    with torch.autocast(device_type='cpu', dtype=torch.bfloat16):
        logits = fc(x)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, target)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert fc.weight.grad is not None
    torch.testing.assert_close(loss, loss_fn(logits.detach().float(), target), atol=1e-5, rtol=1e-5)


def test_buffers_follow_logits_device():
    loss = create_loss('ldam', class_counts=CIFAR10_LT_R100, weight=torch.ones(10))
    meta = torch.empty(4, 10, device='meta')
    out = loss(meta, torch.zeros(4, dtype=torch.long, device='meta'))
    assert out.device.type == 'meta' and loss.margins.device.type == 'meta' and loss.weight.device.type == 'meta'


def test_weight_size_mismatch():
    loss = create_loss('ce', weight=torch.ones(3))
    with pytest.raises(ValueError, match='3 entries'):
        loss(*_batch())


def test_drw_switch_epoch():
    drw = create_reweight('drw', CIFAR10_LT_R100, beta=0.9999, drw_epoch=160)
    assert drw.weight_for_epoch(0) is None and drw.weight_for_epoch(159) is None
    torch.testing.assert_close(drw.weight_for_epoch(160), torch.tensor(CB_REFERENCE), atol=5e-4, rtol=0)
    torch.testing.assert_close(drw.weight_for_epoch(199), drw.weight_for_epoch(160))
    assert create_reweight('drw', CIFAR10_LT_R100, drw_epoch=3).weight_for_epoch(2) is None
    cb = create_reweight('cb', CIFAR10_LT_R100, beta=0.999)
    torch.testing.assert_close(cb.weight_for_epoch(0), effective_number_weights(CIFAR10_LT_R100, 0.999))
    assert create_reweight('none', CIFAR10_LT_R100).weight_for_epoch(500) is None


def test_schedule_drives_loss_weight():
    loss = create_loss('ce')
    drw = create_reweight('drw', CIFAR10_LT_R100, drw_epoch=1)
    logits, target = _batch()
    loss.set_class_weight(drw.weight_for_epoch(0))
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(logits, target))
    loss.set_class_weight(drw.weight_for_epoch(1))
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(logits, target, weight=drw.weight_for_epoch(1)))


def test_ldam_default_scale_is_stated_once():
    from rsg_timm.posthoc import training_logit_scale
    from rsg_timm.train_flags import build_train_parser
    assert LDAMLoss([3, 1]).s == LDAM_DEFAULT_S == training_logit_scale({'loss': 'ldam'})
    assert f'(loss default {LDAM_DEFAULT_S:g})' in ' '.join(build_train_parser().format_help().split())
    restated = re.compile(r"ldam_s or \d|\b30 by default|\bs = 30\b|s: float = \d")
    offenders = [path for path in package_sources()
                 if restated.search(open(os.path.join(REPO_DIR, path), encoding='utf-8').read())]
    assert offenders == []
