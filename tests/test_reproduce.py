"""benchmarks/reproduce.py: a tiny recipe set end to end (train, tabulate beside the paper), dry run, bad input."""
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import REPO_DIR, load_script, write_demo_npz

COUNTS = [12, 8, 6, 4, 3, 2, 2, 1, 1, 1]
reproduce = load_script('benchmarks/reproduce.py')


@pytest.fixture
def tiny_set(tmp_path):
    """Two recipes (CE with and without RSG, the 200-epoch recipe shape) and a 40-image demo-format npz."""
    data = write_demo_npz(tmp_path / 'tiny.npz', COUNTS, test_per_class=2)
    configs = tmp_path / 'configs'
    configs.mkdir()
    common = dict(dataset='demo', loss='ce', reweight='none', epochs=200, batch_size=32, warmup_epochs=0,
                  decay_milestones=[159, 179])
    (configs / 'tiny_r100_ce.yaml').write_text(yaml.safe_dump(dict(model='cifar_resnet20', **common)))
    (configs / 'tiny_r100_ce_rsg.yaml').write_text(
        yaml.safe_dump(dict(model='rsg_resnet20', rsg_epoch_thresh=159, **common)))
    return tmp_path, data, configs


def test_tiny_set_end_to_end(tiny_set, monkeypatch):
    tmp_path, data, configs = tiny_set
    monkeypatch.setitem(reproduce.PAPER_TOP1, 'tiny_r100', {'ce_rsg': (55.5, 'a paper')})
    argv = ['tiny_r100', '--config-dir', str(configs), '--data-dir', str(data), '--epochs', '1', '--output',
            str(tmp_path / 'runs'), '--results-dir', str(tmp_path / 'results'), '--in-process',
            '--', '--no-progress', '--log-interval', '0']
    results = reproduce.main(argv)

    run_dirs = [tmp_path / 'runs' / 'tiny_r100' / f'tiny_r100_{m}-e1' for m in ('ce', 'ce_rsg')]
    rsg_args = yaml.safe_load((run_dirs[1] / 'args.yaml').read_text())
    assert rsg_args['epochs'] == 1 and rsg_args['decay_milestones'] == [0, 0] and rsg_args['rsg_epoch_thresh'] == 0
    table = pd.read_csv(tmp_path / 'results' / 'tiny_r100.csv')
    assert list(table['method']) == ['CE', 'CE-RSG'] and list(table['epochs']) == [1, 1]
    for column in ('top1_last', 'many_last', 'medium_last', 'few_last', 'top1_best', 'best_epoch'):
        assert column in table, column
    summary = pd.read_csv(run_dirs[1] / 'summary.csv')
    assert table['top1_last'][1] == pytest.approx(summary['eval_top1'].iloc[-1])
    assert table['paper_top1_best'].isna()[0] and table['paper_top1_best'][1] == 55.5
    markdown = (tmp_path / 'results' / 'tiny_r100.md').read_text()
    assert '| method | epochs | top-1 last |' in markdown and 'paper top-1 (best epoch)' in markdown
    assert '| CE-RSG | 1 |' in markdown and '| 55.50 | a paper |' in markdown and 'honest' in markdown
    assert results is not None and len(results) == 2

    # a finished run is reused, not trained again
    before = [(d / 'summary.csv').stat().st_mtime_ns for d in run_dirs]
    reproduce.main(argv)
    assert [(d / 'summary.csv').stat().st_mtime_ns for d in run_dirs] == before


def test_dry_run_prints_scaled_commands(capsys):
    assert reproduce.main(['cifar10_lt_r100', '--dry-run', '--epochs', '10', '--only', 'ldam_drw', 'ldam_drw_rsg',
                           '--data-dir', 'DATA']) is None
    plain, rsg = capsys.readouterr().out.strip().splitlines()
    assert 'train.py --config' in plain and 'cifar10_lt_r100_ldam_drw.yaml' in plain and '--data-dir DATA' in plain
    assert '--epochs 10 --decay-milestones 8 9 --drw-epoch 8' in plain and '--rsg-epoch-thresh' not in plain
    assert rsg.endswith('--rsg-epoch-thresh 7')


def test_paper_numbers_name_recipes_that_exist():
    for set_name, methods in reproduce.PAPER_TOP1.items():
        assert set(reproduce.find_recipes(set_name, Path(REPO_DIR) / 'configs')) >= set(methods), set_name


@pytest.mark.parametrize('argv,match', [
    (['cifar10_lt_r1'], 'sets there: .*cifar10_lt_r100'),
    (['cifar10_lt_r100', '--only', 'nope'], 'choose from'),
])
def test_bad_set_is_named(argv, match):
    with pytest.raises(ValueError, match=match):
        reproduce.main([*argv, '--dry-run'])
