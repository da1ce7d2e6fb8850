"""Long-tail samplers: class distributions, epoch reproducibility and DDP shares (rsg_timm.data.samplers)."""
import argparse
from collections import Counter

import numpy as np
import pytest
import torch

from rsg_timm.data import (
    ClassBalancedSampler, InstanceSampler, ProgressiveSampler, SqrtSampler, create_sampler, list_samplers,
    long_tail_counts, sampler_kwargs,
)

COUNTS = long_tail_counts(400, 5, 'exp', 0.01)  # [400, 126, 40, 12, 4]
TARGETS = np.repeat(np.arange(5), COUNTS)


def _class_freq(indices, num_draws):
    hist = np.bincount(TARGETS[np.asarray(indices)], minlength=5)
    return hist / num_draws


def test_registry():
    assert list_samplers() == ['class_balanced', 'deferred', 'instance', 'progressive', 'sqrt']
    assert isinstance(create_sampler('sqrt', TARGETS), SqrtSampler)
    with pytest.raises(ValueError, match="class_balanced.*instance.*progressive.*sqrt"):
        create_sampler('balanced', TARGETS)
    with pytest.raises(ValueError, match='--epochs'):
        create_sampler('progressive', TARGETS)
    with pytest.raises(ValueError, match='rank'):
        create_sampler('instance', TARGETS, num_replicas=2, rank=2)


def test_instance_is_a_seeded_permutation():
    s = InstanceSampler(TARGETS, seed=3)
    first = list(s)
    assert sorted(first) == list(range(len(TARGETS))) and len(s) == len(TARGETS)
    assert list(s) == first  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != first
    longer = InstanceSampler(TARGETS, num_samples=len(TARGETS) * 2 + 5)
    assert Counter(Counter(longer).values()) == Counter({2: len(TARGETS) - 5, 3: 5})


def test_class_balanced_is_uniform_over_classes():
    s = ClassBalancedSampler(TARGETS, num_samples=20000, seed=0)
    torch.testing.assert_close(s.class_probs(), torch.full((5,), 0.2, dtype=torch.float64))
    np.testing.assert_allclose(_class_freq(list(s), 20000), 0.2, atol=0.015)


def test_sqrt_is_proportional_to_sqrt_counts():
    s = SqrtSampler(TARGETS, num_samples=20000, seed=0)
    expected = np.sqrt(COUNTS) / np.sqrt(COUNTS).sum()
    np.testing.assert_allclose(s.class_probs().numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(_class_freq(list(s), 20000), expected, atol=0.015)


def test_progressive_interpolates_from_instance_to_class_balanced():
    s = ProgressiveSampler(TARGETS, total_epochs=10, num_samples=20000)
    ib = np.asarray(COUNTS) / sum(COUNTS)
    np.testing.assert_allclose(s.class_probs().numpy(), ib, rtol=1e-12)
    np.testing.assert_allclose(_class_freq(list(s), 20000), ib, atol=0.015)
    s.set_epoch(5)
    np.testing.assert_allclose(s.class_probs().numpy(), 0.5 * ib + 0.5 * 0.2, rtol=1e-12)
    s.set_epoch(10)
    np.testing.assert_allclose(s.class_probs().numpy(), 0.2, rtol=1e-12)
    np.testing.assert_allclose(_class_freq(list(s), 20000), 0.2, atol=0.015)


@pytest.mark.parametrize('name', ['instance', 'class_balanced', 'sqrt', 'progressive'])
def test_ddp_shares_are_disjoint_slices_of_one_draw(name):
    n = 101  # odd: rank 1 gets one padded position
    shares = [create_sampler(name, np.arange(n) % 3, num_replicas=2, rank=r, seed=5, total_epochs=4) for r in (0, 1)]
    for s in shares:
        s.set_epoch(2)
    draw = shares[0].global_draw().tolist()
    assert draw == shares[1].global_draw().tolist() and len(draw) == n
    a, b = (list(s) for s in shares)
    assert len(a) == len(b) == len(shares[0]) == 51
    interleaved = [i for pair in zip(a, b) for i in pair]
    assert interleaved[:n] == draw and interleaved[n] == draw[0]  # union = the global draw (+ wrap-around pad)
    if name == 'instance':
        assert not set(a) & set(b[:-1])


def test_set_epoch_reproduces_a_resumed_run():
    run = create_sampler('progressive', TARGETS, seed=11, total_epochs=6)
    epochs = []
    for e in range(4):
        run.set_epoch(e)
        epochs.append(list(run))
    assert epochs[2] != epochs[3]
    resumed = create_sampler('progressive', TARGETS, seed=11, total_epochs=6)
    resumed.set_epoch(3)
    assert list(resumed) == epochs[3]


def test_sampler_kwargs_and_dataset_input():
    args = argparse.Namespace(seed=42, epochs=200, world_size=8, rank=3)
    assert sampler_kwargs(args) == dict(num_replicas=8, rank=3, seed=42, total_epochs=200)

    class _Dataset:
        targets = TARGETS.tolist()

    s = create_sampler('class_balanced', _Dataset(), **sampler_kwargs(argparse.Namespace(seed=1, epochs=2)))
    assert len(s) == len(TARGETS) and s.seed == 1


def test_deferred_sampler_switches_to_effective_number_weights():
    from rsg_timm.data import create_sampler
    targets = [0] * 900 + [1] * 90 + [2] * 10
    sampler = create_sampler('deferred', targets, num_samples=30000, switch_epoch=3, beta=0.9999)
    counts = lambda: torch.bincount(torch.as_tensor(targets)[torch.tensor(list(sampler))], minlength=3).double()  # noqa
    sampler.set_epoch(2)
    before = counts() / 30000
    assert before[0] > 0.85 and before[2] < 0.02  # instance-balanced until the switch
    sampler.set_epoch(3)
    n = torch.tensor([900.0, 90.0, 10.0], dtype=torch.float64)
    mass = n * (1 - 0.9999) / (1 - 0.9999 ** n)
    torch.testing.assert_close(counts() / 30000, mass / mass.sum(), atol=0.015, rtol=0)
