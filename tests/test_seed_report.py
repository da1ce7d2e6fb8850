"""benchmarks/seed_report.py: finished run folders become CSV rows, recorded rows of runs kept elsewhere survive,
unfinished runs are left out, and the tables pair each seed's arms."""
import csv

from helpers import load_script

seed_report = load_script('benchmarks/seed_report.py')


def _run(root, name, top1s, per_class):
    run = root / name
    run.mkdir()
    with open(run / 'summary.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=['epoch', 'eval_top1', 'eval_many', 'eval_medium', 'eval_few'])
        writer.writeheader()
        for i, top1 in enumerate(top1s):
            writer.writerow(dict(epoch=200 - len(top1s) + i, eval_top1=top1, eval_many=top1 + 1,
                                 eval_medium=top1 - 10, eval_few='nan'))
    with open(run / 'per_class.csv', 'w', newline='') as f:
        f.write('class_id,label,train_count,test_count,correct,accuracy,shot\n')
        f.writelines(f'{i},c{i},1,1000,0,{a},many\n' for i, a in enumerate(per_class))


def test_report_merges_runs_and_pairs_the_arms(tmp_path):
    runs = tmp_path / 'runs'
    runs.mkdir()
    _run(runs, 's43-ldam_drw', [76.0, 77.0, 76.5], [70.0] * 10)
    _run(runs, 's43-ldam_drw_rsg', [78.0, 79.5, 79.0], [72.0] * 10)
    _run(runs, 's43-ldam_drw_rsg_dp2', [78.0, 78.5], [71.0] * 10)
    (runs / 's43-ldam_drw_rsg_dp2' / 'summary.csv').write_text('epoch,eval_top1\n180,70\n')  # still training
    results = tmp_path / 'seeds.csv'
    with open(results, 'w', newline='') as f:  # a recorded pair whose run folders are elsewhere
        writer = csv.DictWriter(f, fieldnames=seed_report.FIELDS)
        writer.writeheader()
        for arm, top1 in (('LDAM-DRW', 77.0), ('LDAM-DRW + RSG', 78.0)):
            writer.writerow(dict(seed=42, arm=arm, last_top1=top1, best_top1=top1, best_epoch=199, many=80,
                                 medium=60, few='nan', source='recorded', **{f'class_{i}': top1 for i in range(10)}))
    seed_report.main(['--runs', str(runs), '--results', str(results), '--source', 'test'])
    with open(results) as f:
        rows = {(r['seed'], r['arm']): r for r in csv.DictReader(f)}
    assert set(rows) == {('42', 'LDAM-DRW'), ('42', 'LDAM-DRW + RSG'), ('43', 'LDAM-DRW'), ('43', 'LDAM-DRW + RSG')}
    rsg = rows[('43', 'LDAM-DRW + RSG')]
    assert (rsg['last_top1'], rsg['best_top1'], rsg['best_epoch']) == ('79.0', '79.5', '198')
    assert rsg['class_9'] == '72.0' and rsg['source'] == 'test' and rows[('42', 'LDAM-DRW')]['source'] == 'recorded'
    text = seed_report.tables(list(rows.values()))
    assert '| 43 | +2.50 | +2.50 | +2.50 | +2.50 |' in text  # last, best, many, medium gains of seed 43
    assert '| mean ± std | 1.75 ± 1.06 |' in text  # the paired gains +1.00 (seed 42) and +2.50


def test_zoo_card_shows_the_seed_tables_of_the_recorded_csv():
    """The zoo card's seed tables are seed_report's tables of benchmarks/results/cifar10_lt_r100_seeds.csv."""
    from rsg_timm.models.pretrained import PRETRAINED_DIR
    rows = seed_report.merge(None, seed_report.RESULTS, '')
    assert seed_report.tables(rows) in (PRETRAINED_DIR / 'cifar10_lt_r100.md').read_text()
