"""benchmarks/ship_paper_runs.py on a miniature of the paper runs: an RSG run, a plain run forked off it, a zoo with
the tags they replace."""
import dataclasses
import importlib.util

import pandas as pd
import pytest
import timm
import torch

from rsg_timm.models.pretrained import load_pretrained_tags
from rsg_timm.run_folder import TrainingRun, read_run
from rsg_timm.zoo_authoring import add_pretrained

from helpers import load_script, train_args

ship = load_script('benchmarks/ship_paper_runs.py')
train_script = load_script('train.py')


@pytest.fixture(scope='module')
def forked_plain_run(trained_run, tiny_demo, tmp_path_factory):
    """cifar_resnet32 forked from the shared trained run (rsg_resnet32, 2 epochs) after epoch 0; trains epoch 1."""
    out = tmp_path_factory.mktemp('plain')
    train_script.main(train_args(tiny_demo, out, 'plain', '--model', 'cifar_resnet32', '--fork',
                                 str(trained_run.dir / 'checkpoint-0.pth.tar')))
    return out / 'plain'


def test_ship_adds_the_tags_retires_the_old_ones_and_writes_the_page(trained_run, forked_plain_run, tmp_path):
    zoo = tmp_path / 'zoo'
    for retired in ship.RETIRED:
        add_pretrained(trained_run.dir, retired, pretrained_dir=zoo)
    page = ship.ship(trained_run.dir, forked_plain_run, pretrained_dir=zoo)

    tags = load_pretrained_tags(zoo)
    assert sorted(tags) == ['cifar_resnet32.ldam_drw_cifar10_lt_r100', 'cifar_resnet32.ldam_drw_rsg_cifar10_lt_r100']
    assert sorted(p.name for p in zoo.glob('*.safetensors')) == [f'{name}.safetensors' for name in sorted(tags)]
    rsg, plain = read_run(trained_run.dir).summary, read_run(forked_plain_run).summary
    plain_notes = tags['cifar_resnet32.ldam_drw_cifar10_lt_r100']['notes']
    # last epoch from the plain run, best over the shared epoch 0 (the RSG run's row) and the plain run's epoch 1
    best = max(rsg['eval_top1'].iloc[0], plain['eval_top1'].iloc[-1])
    assert plain_notes[0].startswith(f'top-1 {plain["eval_top1"].iloc[-1]:.2f} (last epoch 1;')
    assert f'best-on-test {best:.2f}' in plain_notes[0] and 'paper (best epoch) 77.03' in plain_notes[0]
    assert 'epochs 0-0 are those of the LDAM-DRW + RSG run' in plain_notes[2]
    assert plain_notes[-1] == 'model card: rsg_timm/pretrained/cifar10_lt_r100.md'
    assert 'at commit ' in plain_notes[1] and 'configs/plain.yaml' in plain_notes[1]
    assert f'on {ship.machine()} (benchmarks/paper_runs.sh)' in plain_notes[1]  # the hardware and software
    assert 'CPU cores, ' in ship.machine() and f'; torch {torch.__version__}, timm {timm.__version__}' in ship.machine()
    rsg_notes = tags['cifar_resnet32.ldam_drw_rsg_cifar10_lt_r100']['notes']
    assert rsg_notes[0].startswith(f'top-1 {rsg["eval_top1"].iloc[-1]:.2f} (last epoch 1;') and len(rsg_notes) == 3

    assert (zoo / 'cifar10_lt_r100.md').read_text() == page  # the card ships beside the weights
    assert f'- cifar_resnet32.ldam_drw_cifar10_lt_r100: {plain_notes[1]}' in page  # command, commit, compute
    gain = rsg['eval_top1'].iloc[-1] - plain['eval_top1'].iloc[-1]
    assert f'| RSG minus baseline | {gain:.2f} |' in page and 'paper (best epoch)' in page
    assert page.count('\n| 9 | c9 | 2 | few |') == 1  # the per-class table, rarest class last
    # the spread over the last (here: both) epochs, the plain run's shared epoch 0 included, and the head trade
    plain_top1 = pd.Series([rsg['eval_top1'].iloc[0], plain['eval_top1'].iloc[-1]])
    assert f'| LDAM-DRW | {plain_top1.mean():.2f} | {plain_top1.std():.2f} | {plain_top1.min():.2f} |' in page
    assert f'| LDAM-DRW + RSG | {rsg["eval_top1"].mean():.2f} |' in page and 'last 2 epochs (0-1)' in page
    per_class = {name: read_run(run).per_class for name, run in (('rsg', trained_run.dir), ('plain', forked_plain_run))}
    head = (per_class['rsg']['accuracy'] - per_class['plain']['accuracy'])[:3]  # classes 0-2 have the most images
    assert f'On the 3 largest classes RSG changes accuracy by c0 (40 images) {head[0]:+.2f}' in page
    assert f'(mean {head.mean():+.2f})' in page
    assert "(timm.create_model('cifar_resnet32.ldam_drw_rsg_cifar10_lt_r100', pretrained=True)(x) * 30).softmax(-1)" \
        in page
    assert 'model card:' not in page and 'few-shot group is empty' not in page  # the card does not cite itself
    assert f'from `{forked_plain_run.name}` and `{trained_run.dir.name}`.' in page  # no machine paths
    plots = sorted(p.name for p in zoo.glob('*.png'))
    if importlib.util.find_spec('matplotlib') is None:  # the [plot] extra draws accuracy against training images
        assert plots == [] and '.png)' not in page
    else:
        assert plots == ['cifar10_lt_r100_ldam_drw_per_class.png', 'cifar10_lt_r100_ldam_drw_rsg_per_class.png']
        assert all(f'![{name}]({name})' in page for name in plots)


def test_ship_refuses_unfinished_or_unrelated_runs(trained_run, forked_plain_run, tmp_path):
    run = read_run(trained_run.dir)
    unfinished = TrainingRun(run.run_dir, dict(run.args, epochs=3), run.summary, run.per_class)
    with pytest.raises(ValueError, match='epochs 0..1 of 3.*paper_runs.sh'):
        ship._check_finished(unfinished)
    plain = read_run(forked_plain_run)
    late = TrainingRun(plain.run_dir, plain.args, plain.summary.assign(epoch=plain.summary['epoch'] + 5), None)
    with pytest.raises(ValueError, match='starts at epoch 6.*holds 2 epochs before it'):
        ship.forked_history(late, run)
    history = ship.forked_history(plain, run)
    assert list(history['epoch']) == [0, 1] and 'train_cesc' not in history
    pd.testing.assert_series_equal(history['eval_top1'], pd.concat([run.summary['eval_top1'][:1],
                                                                    plain.summary['eval_top1']], ignore_index=True))


def test_commits_come_from_the_driver():
    commits = ship.paper_run_commits()
    assert set(commits) == {'ldam_drw', 'ldam_drw_rsg'} and all(len(c) >= 7 for c in commits.values())


def test_page_says_why_a_group_is_empty(trained_run, forked_plain_run):
    runs = {'ldam_drw_rsg': read_run(trained_run.dir), 'ldam_drw': read_run(forked_plain_run)}
    for method, run in runs.items():  # CIFAR-10-LT at rho = 100: the rarest class has 50 images, none is few-shot
        few = run.per_class['shot'] == 'few'
        runs[method] = dataclasses.replace(run, per_class=run.per_class.assign(
            shot=run.per_class['shot'].mask(few, 'medium'), train_count=run.per_class['train_count'].mask(few, 50)))
    histories = {'ldam_drw_rsg': runs['ldam_drw_rsg'].summary,
                 'ldam_drw': ship.forked_history(runs['ldam_drw'], runs['ldam_drw_rsg'])}
    notes = {method: ['', ''] for method in runs}
    page = ship.results_page(runs, histories, ship.TAGS, notes)
    rarest = runs['ldam_drw'].per_class['train_count'].min()
    assert f'No class has fewer than 20 training images (the rarest has {rarest}), so the few-shot group is empty' in page


def test_page_picks_the_best_epoch_by_the_runs_eval_metric(trained_run, forked_plain_run):
    """A run selected on --eval-metric loss has its best epoch at the lowest test loss, not the highest top-1."""
    runs = {method: dataclasses.replace(read_run(run), args=dict(read_run(run).args, eval_metric='loss'))
            for method, run in (('ldam_drw_rsg', trained_run.dir), ('ldam_drw', forked_plain_run))}
    histories = {'ldam_drw_rsg': runs['ldam_drw_rsg'].summary,
                 'ldam_drw': ship.forked_history(runs['ldam_drw'], runs['ldam_drw_rsg'])}
    # epoch 0: lower top-1 but lower loss (the loss-best epoch); epoch 1: higher top-1 (the top-1-best epoch)
    histories = {method: history.assign(eval_top1=[41.0, 52.0], eval_loss=[1.0, 2.0])
                 for method, history in histories.items()}
    page = ship.results_page(runs, histories, ship.TAGS, {method: ['', ''] for method in runs})
    assert page.count('| 41.00 (0) |') == 2 and '52.00 (1)' not in page


def test_shipped_zoo_card_numbers_agree_with_the_tags_and_its_own_table():
    """The shipped card's rows are the tags' noted last-epoch numbers, its many/medium are the means of its per-class
    table, and its head-class trade is computed from that table."""
    import re

    from rsg_timm.models.pretrained import PRETRAINED_DIR

    card = (PRETRAINED_DIR / 'cifar10_lt_r100.md').read_text()
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in
            card.split('## Per class (last epoch)\n\n')[1].split('\n\n')[0].splitlines()[2:]]
    table = pd.DataFrame(rows, columns=['class', 'label', 'train_count', 'group', 'plain', 'rsg', 'gain'])
    table = table.astype({'train_count': int, 'plain': float, 'rsg': float, 'gain': float})
    tags = load_pretrained_tags()
    for method, column in (('ldam_drw', 'plain'), ('ldam_drw_rsg', 'rsg')):
        name = f'cifar_resnet32.{ship.TAGS[method]}'
        noted = dict(re.findall(r'(top-1|many|medium) (\d+\.\d+)', tags[name]['notes'][0]))
        assert f'(`{name}`) | {noted["top-1"]} | {noted["many"]} | {noted["medium"]} | n/a |' in card
        for group in ('many', 'medium'):
            assert f'{table.loc[table["group"] == group, column].mean():.2f}' == noted[group], (name, group)
    per_class = {method: table[['label', 'train_count']].assign(accuracy=table[column])
                 for method, column in (('ldam_drw', 'plain'), ('ldam_drw_rsg', 'rsg'))}
    assert ship._head_trade(per_class) in card
    readme = (PRETRAINED_DIR.parent.parent / 'README.md').read_text()  # the last-ten-epoch ranges recorded at shipping
    ranges = re.search(r"baseline's top-1 ranged (\S+) and RSG's (\S+?)\.\n", readme).groups()
    assert f"the baseline's top-1 ranged {ranges[0]} and RSG's {ranges[1]} (the ranges recorded" in card


def test_shipped_zoo_card_head_trade_over_seeds_is_the_seed_table():
    """The card's per-seed head/rest changes are those of benchmarks/results/cifar10_lt_r100_seeds.csv."""
    from helpers import REPO_DIR
    from rsg_timm.models.pretrained import PRETRAINED_DIR

    card = (PRETRAINED_DIR / 'cifar10_lt_r100.md').read_text()
    seeds = pd.read_csv(f'{REPO_DIR}/benchmarks/results/cifar10_lt_r100_seeds.csv').set_index(['seed', 'arm'])
    classes = [f'class_{i}' for i in range(10)]  # ordered by training images, largest first
    gains = {seed: seeds.loc[(seed, 'LDAM-DRW + RSG'), classes] - seeds.loc[(seed, 'LDAM-DRW'), classes]
             for seed in (43, 44)}
    top1 = {seed: seeds.loc[(seed, 'LDAM-DRW + RSG'), 'last_top1'] - seeds.loc[(seed, 'LDAM-DRW'), 'last_top1']
            for seed in (43, 44)}
    assert (f'by {gains[43][:3].mean():+.2f} and {gains[44][:3].mean():+.2f} points on average and the other seven by '
            f'{gains[43][3:].mean():+.2f} and {gains[44][3:].mean():+.2f}, top-1 by {top1[43]:+.2f} and '
            f'{top1[44]:+.2f}') in card
