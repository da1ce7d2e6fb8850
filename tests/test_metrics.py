"""Metrics (top-k, shot groups, ECE, evaluator) and post-hoc corrections, against hand-built cases."""
import math
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

from rsg_timm.metrics import (
    LongTailEvaluator, accuracy, calibration_error, confusion_matrix, format_metrics, per_class_accuracy, shot_accuracy,
    shot_split,
)
from rsg_timm.plots import plot_per_class_accuracy
from rsg_timm.posthoc import logit_adjust, tau_normalize, tau_normalize_classifier

# Class 0..1 many (>100), 2..3 medium (20..100, both ends inclusive), no few-shot class.
COUNTS_NO_FEW = [500, 101, 100, 20]


def _numpy_ece(logits, target, n_bins=15):
    """MiSLAS utils/metric.py written out directly: digitize(right=True), gaps weighted by bin size."""
    probs = torch.softmax(logits.double(), dim=-1).numpy()
    conf, pred, y = probs.max(1), probs.argmax(1), target.numpy()
    idx = np.digitize(conf, np.linspace(0.0, 1.0, n_bins + 1), right=True)
    gaps, sizes = np.zeros(n_bins), np.zeros(n_bins)
    for b in range(n_bins):
        sel = idx == b + 1
        if sel.any():
            sizes[b] = sel.sum()
            gaps[b] = abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return 100 * (gaps * sizes).sum() / sizes.sum(), 100 * gaps.max()


def test_accuracy_topk_and_k_above_num_classes():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.5, 0.3, 0.2]])
    target = torch.tensor([1, 1, 0, 2])
    top1, top2, top5 = accuracy(logits, target, topk=(1, 2, 5))
    assert top1.item() == pytest.approx(25.0)
    assert top2.item() == pytest.approx(50.0)
    assert top5.item() == pytest.approx(100.0)  # k > C: every sample counts
    expected = timm.utils.accuracy(logits, target, topk=(1, 2))
    assert [a.item() for a in accuracy(logits, target, topk=(1, 2))] == pytest.approx([e.item() for e in expected])
    with pytest.raises(ValueError, match='positive'):
        accuracy(logits, target, topk=(0,))


def test_shot_split_thresholds():
    assert shot_split([101, 100, 20, 19, 5000, 1]) == {'many': [0, 4], 'medium': [1, 2], 'few': [3, 5]}
    sizes = {k: len(v) for k, v in shot_split([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]).items()}
    assert sizes == {'many': 8, 'medium': 2, 'few': 0}  # CIFAR-10-LT rho=100 (LDAM-DRW's profile)


def test_shot_accuracy_unweighted_mean_and_empty_group():
    # per-class accuracies 100, 2/7 (many), 0, 0 (medium); class 1 has 7x the test samples of class 0,
    # so a sample-weighted mean (3/8 = 37.5) would differ from the class mean (64.3)
    logits = torch.eye(4)[[0, 1, 1, 3, 3, 3, 2, 3, 0, 0]]
    target = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 2, 3])
    acc = per_class_accuracy(logits, target)
    torch.testing.assert_close(acc, torch.tensor([100.0, 200 / 7, 0.0, 0.0], dtype=acc.dtype))
    out = shot_accuracy(acc, COUNTS_NO_FEW)
    assert out['many'] == pytest.approx((100.0 + 200 / 7) / 2)
    assert out['medium'] == pytest.approx(0.0)
    assert math.isnan(out['few'])
    assert (out['many_classes'], out['medium_classes'], out['few_classes']) == (2, 2, 0)
    assert 'few n/a' in format_metrics(out, keys=['many', 'few'])


def test_per_class_accuracy_missing_class_is_nan():
    acc = per_class_accuracy(torch.eye(3)[[0, 1]], torch.tensor([0, 0]), num_classes=3)
    assert acc[0] == 50.0 and math.isnan(acc[1]) and math.isnan(acc[2])
    out = shot_accuracy(acc, [200, 200, 5])
    assert out['many'] == pytest.approx(50.0) and math.isnan(out['few'])


def test_confusion_matrix_rows_are_true_class():
    cm = confusion_matrix(torch.tensor([0, 2, 2, 1]), torch.tensor([0, 0, 2, 1]), 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]


def test_ece_matches_numpy():
    logits = torch.randn(300, 7) * 3
    target = torch.randint(0, 7, (300,))
    ece, mce = calibration_error(logits, target)
    ref_ece, ref_mce = _numpy_ece(logits, target)
    assert ece == pytest.approx(ref_ece, abs=1e-4)
    assert mce == pytest.approx(ref_mce, abs=1e-4)


def test_ece_bin_closed_on_the_right():
    # With 2 bins the edge 0.5 is exact: confidence 0.5 belongs to (0, 0.5], not to (0.5, 1].
    logits = torch.tensor([[0.0, 0.0], [math.log(0.9), math.log(0.1)]])
    target = torch.tensor([0, 1])  # first correct at confidence 0.5, second wrong at 0.9
    ece, mce = calibration_error(logits, target, n_bins=2)
    assert ece == pytest.approx(100 * (0.5 + 0.9) / 2, abs=1e-4)  # one shared bin would give 20
    assert mce == pytest.approx(90.0, abs=1e-4)
    assert (ece, mce) == pytest.approx(_numpy_ece(logits, target, n_bins=2), abs=1e-4)


def test_evaluator_streaming_equals_one_shot():
    num_classes, counts = 6, [300, 150, 60, 40, 10, 3]
    logits = torch.randn(90, num_classes) * 2
    target = torch.randint(0, num_classes, (90,))
    names = [f'c{i}' for i in range(num_classes)]
    streamed = LongTailEvaluator(num_classes, counts, label_names=names, device='cpu')
    for chunk_logits, chunk_target in zip(logits.split(17), target.split(17)):
        streamed.update(chunk_logits, chunk_target)
    once = LongTailEvaluator(num_classes, counts, label_names=names)
    once.update(logits, target)
    a, b = streamed.compute(), once.compute()
    assert a.keys() == b.keys()
    assert a == pytest.approx(b, nan_ok=True)
    assert a['top1'] == pytest.approx(accuracy(logits, target, topk=(1,))[0].item(), abs=1e-4)
    assert (a['ece'], a['mce']) == pytest.approx(_numpy_ece(logits, target), abs=1e-4)
    expected_groups = shot_accuracy(per_class_accuracy(logits, target), counts)
    assert {k: a[k] for k in expected_groups} == pytest.approx(expected_groups, nan_ok=True)
    assert set(a) >= {'top1', 'top5', 'many', 'medium', 'few', 'ece', 'mce', 'many_classes'}

    table = streamed.per_class()
    assert list(table.columns) == ['class_id', 'label', 'train_count', 'test_count', 'correct', 'accuracy', 'shot']
    assert table['test_count'].sum() == 90
    assert table['shot'].tolist() == ['many', 'many', 'medium', 'medium', 'few', 'few']
    cm = streamed.confusion()
    assert cm.values.sum() == 90 and list(cm.index) == names
    assert (np.diag(cm.values) == table['correct'].values).all()
    assert cm.values.tolist() == confusion_matrix(logits.argmax(1), target, num_classes).tolist()


def test_evaluator_bf16_and_without_counts():
    ev = LongTailEvaluator(4, track_confusion=False)
    ev.update(torch.randn(10, 4).bfloat16(), torch.randint(0, 4, (10,)))
    out = ev.compute()
    assert set(out) == {'top1', 'top5', 'ece', 'mce'} and out['top5'] == 100.0
    assert 'train_count' not in ev.per_class()
    with pytest.raises(RuntimeError, match='track_confusion=True'):
        ev.confusion()


def test_evaluator_errors():
    with pytest.raises(ValueError, match='num_classes'):
        LongTailEvaluator(3, class_counts=[1, 2])
    for ev in (LongTailEvaluator(3), LongTailEvaluator(3, device='cpu')):
        with pytest.raises(RuntimeError, match='update'):
            ev.compute()
    with pytest.raises(ValueError, match='expects 3'):
        ev.update(torch.randn(2, 4), torch.zeros(2, dtype=torch.long))


def test_plot_skips_without_matplotlib(tmp_path, monkeypatch):
    ev = LongTailEvaluator(3, class_counts=[200, 50, 5])
    ev.update(torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]))
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    monkeypatch.setitem(sys.modules, 'matplotlib.figure', None)
    assert plot_per_class_accuracy(ev.per_class(), str(tmp_path / 'acc.png')) is None
    assert not (tmp_path / 'acc.png').exists()
    with pytest.raises(ValueError, match='class_counts'):
        plot_per_class_accuracy(ev.per_class().drop(columns='train_count'), str(tmp_path / 'x.png'))


def test_logit_adjust_posthoc():
    counts = [90, 9, 1]
    logits = torch.tensor([[2.0, 1.0, -1.0]])
    prior = torch.tensor([0.9, 0.09, 0.01])
    torch.testing.assert_close(logit_adjust(logits, counts), logits - torch.log(prior + 1e-12))
    torch.testing.assert_close(logit_adjust(logits, counts, tau=0.0), logits - math.log(1 + 1e-12))
    torch.testing.assert_close(logit_adjust(logits, counts, tau=2.0), logits - torch.log(prior ** 2 + 1e-12))
    assert logit_adjust(logits, counts).argmax().item() == 2  # the rare class wins after adjustment
    with pytest.raises(ValueError, match='3 class counts'):
        logit_adjust(torch.randn(1, 4), counts)


def test_tau_normalize_classifier():
    fc = nn.Linear(5, 3)
    for tau in (0.0, 0.5, 1.0):
        new = tau_normalize_classifier(fc, tau)
        assert new.bias is None and fc.bias is not None
        norms = fc.weight.norm(dim=1, keepdim=True)
        torch.testing.assert_close(new.weight, fc.weight / norms ** tau)
    torch.testing.assert_close(tau_normalize_classifier(fc, 1.0).weight.norm(dim=1), torch.ones(3))
    conv = nn.Conv2d(5, 3, 1)
    torch.testing.assert_close(tau_normalize_classifier(conv, 1.0).weight.flatten(1).norm(dim=1), torch.ones(3))


def test_tau_normalize_rejects_cosine_classifier():
    class NormedLinear(nn.Linear):
        def forward(self, x):
            return nn.functional.linear(nn.functional.normalize(x), nn.functional.normalize(self.weight))

    with pytest.raises(ValueError, match='cosine'):
        tau_normalize_classifier(NormedLinear(4, 2))
    with pytest.raises(ValueError, match='get_classifier'):
        tau_normalize(nn.Linear(4, 2))
    with pytest.raises(ValueError, match='cosine'):
        tau_normalize(timm.create_model('cifar_resnet20', num_classes=3, use_norm=True))


def test_tau_normalize_timm_model():
    model = timm.create_model('test_resnet', num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    new = tau_normalize(model, tau=0.0)
    assert model.get_classifier().bias is not None and new.get_classifier().bias is None
    with torch.no_grad():
        expected = model(x) - model.get_classifier().bias
        torch.testing.assert_close(new(x), expected)


def test_running_top1_counts_what_was_added():
    evaluator = LongTailEvaluator(3)
    assert evaluator.running_top1() == (0, 0.0)
    evaluator.update(torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 1, 0, 0]))
    assert evaluator.running_top1() == (4, 75.0)
    assert evaluator.compute()['top1'] == 75.0
