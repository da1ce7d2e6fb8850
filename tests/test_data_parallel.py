"""--dp-replicas: what nn.DataParallel over N GPUs computes, emulated on one device, equals N single-device calls on
the shares of the batch, with DataParallel's BatchNorm bookkeeping and RSG's unfrozen contrastive module."""
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F
import yaml

import rsg_timm  # noqa: F401
from rsg_timm.data_parallel import EmulatedDataParallel

from helpers import TINY_COUNTS, load_script, train_args

# Both halves hold head (0, 1) and tail classes, so each share generates samples after the threshold.
TARGET = torch.tensor([0, 5, 1, 7, 0, 3, 9, 1, 0, 2, 1, 6, 0, 8, 4, 1])
GENERATION_EPOCH, CESC_EPOCH = 200, 0


def _rsg_model(epoch: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model('rsg_resnet20', num_classes=10)
    model.set_class_counts(TINY_COUNTS)
    model.set_epoch(epoch)
    return model.train()


def _images() -> torch.Tensor:
    return torch.randn(len(TARGET), 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _loss(logits, target, aux) -> torch.Tensor:
    return F.cross_entropy(logits, target) + sum(aux.values())


def _grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _bn_stats(model) -> dict:
    return {n: b.clone() for n, b in model.named_buffers() if 'running' in n or 'num_batches' in n}


@pytest.mark.parametrize('epoch', [CESC_EPOCH, GENERATION_EPOCH])
def test_two_replicas_equal_two_calls_on_the_halves(epoch):
    """Logits, targets, the losses and every gradient equal two single-device calls on the halves, concatenated:
    one classifier mean over all rows, the auxiliary losses averaged over the halves."""
    x = _images()
    reference = _rsg_model(epoch)
    reference.rsg.freeze_contrastive = False  # as on the replicas (tested on its own below)
    halves = [reference(xi, target=ti) for xi, ti in zip(x.chunk(2), TARGET.chunk(2))]
    ref_logits = torch.cat([h.logits[:8] for h in halves] + [h.logits[8:] for h in halves])
    ref_target = torch.cat([h.target[:8] for h in halves] + [h.target[8:] for h in halves])
    ref_aux = {k: (halves[0].aux_losses[k] + halves[1].aux_losses[k]) / 2 for k in halves[0].aux_losses}
    ref_loss = _loss(ref_logits, ref_target, ref_aux)
    ref_loss.backward()

    model = EmulatedDataParallel(_rsg_model(epoch), 2)
    out = model(x, target=TARGET)
    loss = _loss(out.logits, out.target, out.aux_losses)
    loss.backward()

    if epoch == GENERATION_EPOCH:
        assert out.logits.shape[0] > len(TARGET), 'no samples generated'
    assert torch.equal(out.target, ref_target)
    assert torch.allclose(out.logits, ref_logits, atol=1e-6)
    assert torch.equal(out.target[:len(TARGET)], TARGET)  # real rows first, in batch order
    for name in ref_aux:
        assert torch.allclose(out.aux_losses[name], ref_aux[name], atol=1e-6), name
    assert torch.allclose(loss, ref_loss, atol=1e-6)
    ref_grads, grads = _grads(reference), _grads(model.module)
    assert ref_grads.keys() == grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_the_shares_differ_from_one_batch():
    """The emulation changes the maths (BatchNorm and RSG per half), so N=2 is not the single-device step."""
    x = _images()
    single = _rsg_model(GENERATION_EPOCH)(x, target=TARGET)
    shared = EmulatedDataParallel(_rsg_model(GENERATION_EPOCH), 2)(x, target=TARGET)
    assert not torch.allclose(single.logits[:len(TARGET)], shared.logits[:len(TARGET)], atol=1e-4)


@pytest.mark.parametrize('arch', ['rsg_resnet20', 'cifar_resnet20'])
def test_running_statistics_are_the_first_shares(arch):
    """Only replica 0's in-place BatchNorm updates survive a DataParallel step; the other shares see the statistics
    as they were before it."""
    x = _images()
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10).train()
    if arch.startswith('rsg'):
        model.set_class_counts(TINY_COUNTS)
    reference = copy.deepcopy(model)
    labels = dict(target=TARGET) if arch.startswith('rsg') else {}
    reference(x[:8], **{k: v[:8] for k, v in labels.items()})
    EmulatedDataParallel(model, 2)(x, **labels)
    expected, got = _bn_stats(reference), _bn_stats(model)
    assert expected and expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_plain_model_logits_are_the_halves():
    x = _images()
    torch.manual_seed(0)
    model = timm.create_model('cifar_resnet20', num_classes=10).train()
    reference = copy.deepcopy(model)
    expected = torch.cat([reference(xi) for xi in x.chunk(2)])
    assert torch.allclose(EmulatedDataParallel(model, 2)(x), expected, atol=1e-6)


def _contrastive_grads(replicas: int) -> list:
    model = _rsg_model(GENERATION_EPOCH)
    if replicas > 1:
        model = EmulatedDataParallel(model, replicas)
    out = model(_images(), target=TARGET)
    _loss(out.logits, out.target, out.aux_losses).backward()
    rsg = model.module.rsg if replicas > 1 else model.rsg
    params = list(rsg.contrastive_module.parameters()) + list(rsg.contrastive_fc.parameters())
    return [p.grad for p in params]


def test_contrastive_module_trains_after_the_threshold_only_on_replicas():
    """The official freeze sets requires_grad on the module's parameters, which DataParallel replicas do not expose:
    one device freezes the contrastive module in the generation phase, two replicas keep training it."""
    assert all(g is None or not g.any() for g in _contrastive_grads(1))
    grads = _contrastive_grads(2)
    assert len(grads) == 6 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_eval_and_unlabelled_calls_are_the_model():
    x = _images()
    model = _rsg_model(GENERATION_EPOCH)
    wrapped = EmulatedDataParallel(model, 2)
    wrapped.eval()
    assert not model.training and torch.equal(wrapped(x, target=TARGET), model(x))


def test_a_batch_smaller_than_the_replicas_uses_fewer_shares():
    """DataParallel's scatter gives one share per row when the batch is smaller than the replica count."""
    x = _images()[:1]
    model = _rsg_model(CESC_EPOCH)
    out = EmulatedDataParallel(copy.deepcopy(model), 4)(x, target=TARGET[:1])
    ref = model(x, target=TARGET[:1])
    assert torch.allclose(out.logits, ref.logits, atol=1e-6)


@pytest.mark.parametrize('replicas', [0, -1, 1.5, True])
def test_bad_replica_counts_are_refused(replicas):
    with pytest.raises(ValueError, match='dp-replicas'):
        EmulatedDataParallel(_rsg_model(CESC_EPOCH), replicas)


def test_train_dp_replicas_trains_through_the_emulation(tiny_demo, tmp_path, monkeypatch):
    """train.py --dp-replicas 2 runs every training step through the emulation (both phases) and records the flag."""
    train = load_script('train.py')
    shares = []
    forward = EmulatedDataParallel.forward

    def counting_forward(self, x, target=None):
        shares.append((self.replicas, self.training))
        return forward(self, x, target)

    monkeypatch.setattr(EmulatedDataParallel, 'forward', counting_forward)
    result = train.main(train_args(tiny_demo, tmp_path, 'dp', '--rsg-epoch-thresh', '0', '--dp-replicas', '2'))
    assert shares and all(s == (2, True) for s in shares)
    assert len(shares) == 2 * (sum(TINY_COUNTS) // 32)  # every step of both epochs (the last partial batch dropped)
    with open(tmp_path / 'dp' / 'args.yaml') as f:
        assert yaml.safe_load(f)['dp_replicas'] == 2
    assert math.isfinite(result['top1'])


def test_train_refuses_a_replica_count_below_one(tiny_demo, tmp_path):
    with pytest.raises(ValueError, match='--dp-replicas 0'):
        load_script('train.py').main(train_args(tiny_demo, tmp_path, 'dp0', '--dp-replicas', '0'))
