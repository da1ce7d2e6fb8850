"""Smoke test of benchmarks/bench_rsg.py: the CLI writes the documented CSV, and the memory tracker sees the direct
formulation's [B, K, C, H, W] tensors that the RSG module avoids."""
import csv
import importlib.util
import os

import pytest
import torch

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
_spec = importlib.util.spec_from_file_location('_bench_rsg', os.path.join(REPO, 'benchmarks', 'bench_rsg.py'))
bench_rsg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_rsg)


@pytest.fixture
def one_thread():
    """One intra-op thread: the smoke test needs no parallelism, and on a busy machine OpenMP wake-ups slow every op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bench_rsg_smoke(tmp_path, one_thread):
    path = tmp_path / 'step.csv'
    bench_rsg.main(['--model', 'rsg_resnet20', '-b', '4', '--reps', '1', '--warmup', '0', '--csv', str(path)])
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == bench_rsg.STEP_COLUMNS
    assert [r['phase'] for r in rows] == ['cesc', 'mv']
    assert all(float(r['ratio']) > 0 and float(r['rsg_peak_mb']) > 0 for r in rows)
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]

    # Tiny module shape: both formulations give the same losses, and the direct one's extra peak holds at least
    # one [B, K, C, H, W] float32 tensor more than the vectorised module's.
    B, C, H, N = 8, 64, 8, 10  # C large next to D=256, so the [B, K, C, H, W] tensors set the peaks
    row = bench_rsg.bench_module('tiny', B, C, H, N, reps=1, warmup=0)
    assert row['bkchw_mb'] == 4 * B * bench_rsg.N_CENTER * C * H * H / 2 ** 20
    assert row['direct_peak_mb'] - row['rsg_peak_mb'] >= row['bkchw_mb']
    target = bench_rsg.long_tail_labels(B, N)[0]
    kwargs = dict(n_center=bench_rsg.N_CENTER, feature_maps_shape=[C, H, H], num_classes=N, head_class_lists=[0, 1],
                  epoch_thresh=0)
    rsg = bench_rsg.RSG(**kwargs)
    with torch.no_grad():
        rsg.centers.normal_()
    direct = bench_rsg.DirectRSG(**kwargs)
    direct.load_state_dict(rsg.state_dict())
    maps = torch.randn(B, C, H, H)
    for a, b in zip(rsg(feature_maps=maps, target=target, epoch=1), direct(feature_maps=maps, target=target, epoch=1)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
