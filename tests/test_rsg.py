"""RSG module: golden vectors from the official implementation, spec edge cases, cost rules, DDP-safe freeze."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from rsg_timm import RSG
from rsg_timm.rsg import num_head_classes, plan_mv_pairs

from helpers import TESTDATA_DIR
from rsg_reference import reference_rsg

# the official implementation's outputs, one file per case (tests/data/README.md)
GOLDEN_CASES = ('cesc_phase', 'mv_head_ge_tail', 'mv_head_lt_tail')
CONTRASTIVE = ('contrastive_module.', 'contrastive_fc.')


def _assert_close(actual, expected, name):
    """rtol/atol 1e-4 relative to the expected tensor's scale: float32 rounding over a few thousand terms."""
    scale = expected.detach().abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual.detach(), expected.detach(), rtol=1e-4, atol=1e-4 * float(scale), msg=name)


def _make_rsg(C=8, H=4, N=6, K=3, D=16, head=(0, 1), strength=1.0, thresh=5):
    return RSG(n_center=K, feature_maps_shape=[C, H, H], num_classes=N, contrastive_module_dim=D,
               head_class_lists=list(head), transfer_strength=strength, epoch_thresh=thresh)


def _randomise_centers(rsg):
    # Fresh centres are all zero, which hides centre-indexing mistakes; spread them out for the checks.
    with torch.no_grad():
        rsg.centers.normal_()


@pytest.mark.parametrize('case_name', GOLDEN_CASES)
def test_matches_official_golden_vectors(case_name):
    case = torch.load(os.path.join(TESTDATA_DIR, f'rsg_golden_{case_name}.pt'))
    cfg, inputs = case['config'], case['inputs']
    rsg = _make_rsg(C=cfg['C'], H=cfg['H'], N=cfg['N'], K=cfg['K'], D=cfg['D'], head=cfg['head'],
                    strength=cfg['strength'], thresh=cfg['thresh'])
    rsg.load_state_dict(case['state_dict'], strict=True)  # the official parameter names and shapes
    f = inputs['feature_maps'].clone().requires_grad_(True)
    out, loss_cesc, loss_mv, out_target = rsg(
        feature_maps=f, head_class_lists=inputs['head_class_lists'], target=inputs['target'], epoch=inputs['epoch'])
    expected = case['outputs']
    assert torch.equal(out_target, expected['target'])
    _assert_close(out, expected['feature_maps'], 'feature_maps')
    _assert_close(loss_cesc, expected['loss_cesc'], 'loss_cesc')
    _assert_close(loss_mv, expected['loss_mv'], 'loss_mv')

    (loss_cesc + loss_mv + (out * case['R']).sum()).backward()
    params = dict(rsg.named_parameters())
    for name, grad in case['grads'].items():
        _assert_close(f.grad if name == 'feature_maps' else params[name].grad, grad, f'grad of {name}')
    with_grad = {n for n, p in params.items() if p.grad is not None}
    assert with_grad == set(case['grads']) - {'feature_maps'}


EDGE_CASES = {
    # name: (labels, epoch, strength)
    'odd_batch_cesc': ([0, 3, 1, 4, 0, 5, 2], 2, 1.0),
    'odd_batch_mv': ([0, 3, 1, 4, 0, 5, 2], 9, 1.0),
    'batch_of_one_cesc': ([4], 2, 1.0),
    'batch_of_one_mv': ([4], 9, 1.0),
    'head_only_mv': ([0, 1, 1, 0, 0], 9, 1.0),
    'tail_only_mv': ([2, 3, 5, 4], 9, 1.0),
    'more_heads_mv': ([0, 1, 0, 0, 1, 4, 1, 0, 2], 9, 1.0),
    'more_tails_mv': ([0, 2, 3, 4, 5, 2, 3, 4, 1, 5, 5], 9, 1.0),
    'strength_below_one': ([0, 2, 3, 4, 5, 2, 3, 4, 1, 5, 5], 9, 0.3),
}


@pytest.mark.parametrize('labels,epoch,strength', EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_matches_spec_reference_on_edge_batches(labels, epoch, strength):
    rsg = _make_rsg(strength=strength)
    _randomise_centers(rsg)
    target = torch.tensor(labels)
    f = torch.randn(len(labels), 8, 4, 4, requires_grad=True)
    out, loss_cesc, loss_mv, out_target = rsg(feature_maps=f, target=target, epoch=epoch)
    ref_out, ref_cesc, ref_mv, ref_target = reference_rsg(rsg, f, target, head=[0, 1], epoch=epoch)
    assert torch.equal(out_target, ref_target)
    _assert_close(out, ref_out, 'out')
    _assert_close(loss_cesc, ref_cesc, 'loss_cesc')
    _assert_close(loss_mv, ref_mv, 'loss_mv')
    assert torch.isfinite(loss_cesc) and torch.isfinite(loss_mv)

    grads = torch.autograd.grad(loss_cesc + loss_mv + out.square().sum(), [f] + list(rsg.parameters()),
                                allow_unused=True)
    ref_grads = torch.autograd.grad(ref_cesc + ref_mv + ref_out.square().sum(), [f] + list(rsg.parameters()),
                                    allow_unused=True)
    for (name, _), mine, ref in zip([('input', None)] + list(rsg.named_parameters()), grads, ref_grads):
        assert (mine is None) == (ref is None), name
        if mine is not None:
            _assert_close(mine, ref, f'grad of {name}')


def test_generated_count_follows_official_segments():
    head, tail = torch.arange(3), torch.arange(3, 10)  # nh=3 < nt=7: S = int(7/3) = 2 segments of 3 pairs
    a, b = plan_mv_pairs(head, tail, 1.0)
    assert a.tolist() == [0, 1, 2, 0, 1, 2] and b.tolist() == [3, 4, 5, 6, 7, 8]
    a, b = plan_mv_pairs(tail, head, 1.0)  # nh=7 >= nt=3: 2 segments, each pairing 3 heads with all tails
    assert a.tolist() == [3, 4, 5, 6, 7, 8] and b.tolist() == [0, 1, 2, 0, 1, 2]
    a, _ = plan_mv_pairs(head, tail, 0.5)  # half of the 2 full segments
    assert a.numel() == 3
    a, _ = plan_mv_pairs(head, tail, 0.1)  # at least one segment
    assert a.numel() == 3


def test_forward_head_lists_override_and_default():
    rsg = _make_rsg(head=[])
    f, target = torch.randn(6, 8, 4, 4), torch.tensor([0, 0, 2, 3, 0, 4])
    assert rsg(feature_maps=f, target=target, epoch=9).feature_maps.shape[0] == 6  # empty head list: no transfer
    assert rsg(feature_maps=f, head_class_lists=[0], target=target, epoch=9).feature_maps.shape[0] == 9
    rsg.set_head_classes([0])
    assert rsg(feature_maps=f, target=target, epoch=9).feature_maps.shape[0] == 9


def test_bad_input_is_named():
    rsg = _make_rsg()
    with pytest.raises(ValueError, match='labels'):
        rsg(feature_maps=torch.randn(2, 8, 4, 4), epoch=0)
    with pytest.raises(ValueError, match=r'\[B, 8, H, W\]'):
        rsg(feature_maps=torch.randn(2, 5, 4, 4), target=torch.tensor([0, 1]), epoch=0)
    with pytest.raises(ValueError, match='head class ids'):
        rsg.set_head_classes([7])


def test_contrastive_freeze_keeps_requires_grad():
    rsg = _make_rsg()
    target = torch.tensor([0, 2, 3, 1, 4, 5, 0, 3])
    f = torch.randn(8, 8, 4, 4)
    _, loss_cesc, loss_mv, _ = rsg(feature_maps=f, target=target, epoch=9)
    (loss_cesc + loss_mv).backward()
    for name, p in rsg.named_parameters():
        assert p.requires_grad, name
        assert (p.grad is None) == name.startswith(CONTRASTIVE), name


class _Recorder(TorchDispatchMode):
    """Records the largest tensor any op produces and the ops that read device values back to the host."""
    SYNC_OPS = {'_local_scalar_dense', 'nonzero', 'masked_select', 'unique', '_unique2', 'item'}

    def __init__(self):
        super().__init__()
        self.max_numel, self.syncs = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in self.SYNC_OPS:
            self.syncs.append(name)
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize('epoch', [2, 9], ids=['cesc', 'mv'])
def test_no_bkchw_tensor_and_one_host_sync(epoch):
    B, C, H, N, K = 16, 8, 4, 6, 5
    rsg = _make_rsg(C=C, H=H, N=N, K=K, head=[0, 1])
    f = torch.randn(B, C, H, H, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 5, 0, 0, 1, 2, 3, 4, 5, 0, 1, 2])
    with _Recorder() as rec:
        out, loss_cesc, loss_mv, _ = rsg(feature_maps=f, target=target, epoch=epoch)
        (loss_cesc + loss_mv + out.sum()).backward()
    assert rec.max_numel < B * K * C * H * H
    assert len(rec.syncs) <= (1 if epoch > rsg.epoch_thresh else 0), rec.syncs


@pytest.mark.parametrize('epoch', [2, 9], ids=['cesc', 'mv'])
def test_autocast_bf16_keeps_float32_distances(epoch):
    rsg = _make_rsg()
    _randomise_centers(rsg)
    f = torch.randn(10, 8, 4, 4)
    target = torch.tensor([0, 2, 3, 1, 4, 5, 0, 3, 1, 2])
    ref = rsg(feature_maps=f, target=target, epoch=epoch)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = rsg(feature_maps=f.bfloat16(), target=target, epoch=epoch)
        (out.loss_cesc + out.loss_mv + out.feature_maps.float().sum()).backward()
    assert out.loss_cesc.dtype == torch.float32 and out.loss_mv.dtype == torch.float32
    assert out.feature_maps.dtype == torch.bfloat16
    assert torch.equal(out.target, ref.target)
    torch.testing.assert_close(out.loss_cesc, ref.loss_cesc, rtol=2e-2, atol=1e-2)
    torch.testing.assert_close(out.loss_mv, ref.loss_mv, rtol=5e-2, atol=5e-2)


def _ddp_worker(rank, world_size, port, result_path):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world_size)
    torch.manual_seed(0)  # same initial weights on every rank
    rsg = _make_rsg()
    ddp = torch.nn.parallel.DistributedDataParallel(rsg, find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    torch.manual_seed(1 + rank)
    snapshots = {}
    for epoch in (2, 3, 9, 10):  # CESC phase, then generation: the trained parameter set changes mid-run
        f = torch.randn(8, 8, 4, 4)
        target = torch.randint(0, 6, (8,))
        target[0], target[1] = 0, 3  # at least one head and one tail sample on every rank
        out, loss_cesc, loss_mv, _ = ddp(feature_maps=f, target=target, epoch=epoch)
        opt.zero_grad(set_to_none=True)
        (loss_cesc + loss_mv + out.square().mean()).backward()
        opt.step()
        snapshots[epoch] = {k: v.detach().clone() for k, v in rsg.state_dict().items()}
    if rank == 0:
        torch.save(snapshots, result_path)
    else:
        torch.save(snapshots, result_path + '.1')
    dist.destroy_process_group()


def test_ddp_across_the_phase_switch(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    result = str(tmp_path / 'snap.pt')
    mp.spawn(_ddp_worker, args=(2, port, result), nprocs=2, join=True)
    rank0, rank1 = torch.load(result), torch.load(result + '.1')
    for epoch in rank0:
        for k in rank0[epoch]:
            torch.testing.assert_close(rank0[epoch][k], rank1[epoch][k], msg=f'{k} differs across ranks')
    # Frozen after the threshold: the contrastive weights do not move between the generation-phase steps.
    for k in rank0[9]:
        if k.startswith(CONTRASTIVE):
            assert torch.equal(rank0[9][k], rank0[10][k]), k
    assert not torch.equal(rank0[9]['vec_transformation_module.0.weight'],
                           rank0[10]['vec_transformation_module.0.weight'])


@pytest.mark.parametrize('strength', [1.0000001, 2.5, 10.0])
def test_strength_above_one_is_refused_not_silently_one(strength):
    # The official code slices past the batch for s > 1 (shape errors or NaN at the first generating epoch), so it
    # never generates more than at 1; a larger value is refused where it is given instead of acting like 1.
    with pytest.raises(ValueError, match=r'--rsg-strength\) must lie in \(0, 1\]'):
        _make_rsg(strength=strength)
    with pytest.raises(ValueError, match=r'must lie in \(0, 1\]'):
        plan_mv_pairs(torch.arange(3), torch.arange(3, 10), strength)


def test_generation_phase_starts_after_the_threshold():
    """``generates`` is the one phase rule: the forward pass generates samples exactly when it says so."""
    rsg = _make_rsg(thresh=5).train()
    maps, target = torch.randn(6, 8, 4, 4), torch.tensor([0, 1, 2, 3, 4, 5])
    assert [rsg.generates(epoch) for epoch in (0, 5, 6, 100)] == [False, False, True, True]
    for epoch in (5, 6):
        out = rsg(feature_maps=maps, target=target, epoch=epoch)
        assert (out[0].shape[0] > 6) == rsg.generates(epoch)


def test_head_class_count_truncates_like_the_official_code():
    assert [num_head_classes(0.2, n) for n in (10, 7, 4, 100)] == [2, 1, 0, 20]
    assert num_head_classes(0.25, 10) == 2 and num_head_classes(1.0, 3) == 3
