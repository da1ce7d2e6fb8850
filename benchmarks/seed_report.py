"""Tabulate the seed campaign of the paired CIFAR-10-LT rho=100 runs (benchmarks/seed_runs.sh).

    python benchmarks/seed_report.py --runs output/seed_runs/runs

reads every finished run folder ``s<seed>-<arm>`` (``summary.csv`` and ``per_class.csv``), merges them into
``benchmarks/results/cifar10_lt_r100_seeds.csv`` (one row per seed and arm; rows whose run folder is not on this
machine, such as the zoo's seed-42 pair, are kept as recorded, with their source) and prints the tables: top-1 per
seed with mean and standard deviation per arm, the paired gain of RSG over LDAM-DRW per seed, the two-GPU
DataParallel semantics beside the single-device RSG arm, and the per-class gain.
"""
import argparse
import csv
import math
import os
import re
import statistics
from typing import Dict, List, Optional, Sequence

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'cifar10_lt_r100_seeds.csv')
ARMS = {  # run-folder suffix -> arm name, in table order
    'ldam_drw': 'LDAM-DRW',
    'ldam_drw_rsg': 'LDAM-DRW + RSG',
    'ldam_drw_rsg_dp2': 'LDAM-DRW + RSG, 2-GPU DataParallel semantics',
}
PLAIN, RSG, DP2 = ARMS.values()
LAST_EPOCH = 199
NUM_CLASSES = 10
FIELDS = ['seed', 'arm', 'last_top1', 'best_top1', 'best_epoch', 'many', 'medium', 'few',
          *[f'class_{i}' for i in range(NUM_CLASSES)], 'source']


def _rows(path: str) -> List[Dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def read_run(run_dir: str, source: str) -> Optional[Dict[str, str]]:
    """The CSV row of a finished run folder; None while it is still training."""
    summary_path, per_class_path = (os.path.join(run_dir, n) for n in ('summary.csv', 'per_class.csv'))
    if not os.path.isfile(summary_path):
        return None
    summary = _rows(summary_path)
    if int(summary[-1]['epoch']) != LAST_EPOCH or not os.path.isfile(per_class_path):
        return None
    last = summary[-1]
    best = max(summary, key=lambda r: float(r['eval_top1']))  # the first epoch reaching the best top-1
    row = dict(last_top1=last['eval_top1'], best_top1=best['eval_top1'], best_epoch=best['epoch'],
               many=last['eval_many'], medium=last['eval_medium'], few=last['eval_few'], source=source)
    for r in _rows(per_class_path):
        row[f'class_{r["class_id"]}'] = r['accuracy']
    return row


def merge(runs_dir: Optional[str], results: str, source: str) -> List[Dict[str, str]]:
    """The recorded rows, updated with every finished run folder under ``runs_dir``."""
    table = {(r['seed'], r['arm']): r for r in _rows(results)} if os.path.isfile(results) else {}
    for name in sorted(os.listdir(runs_dir)) if runs_dir else []:
        match = re.fullmatch(r's(\d+)-(\w+)', name)
        if not match or match.group(2) not in ARMS or not os.path.isdir(os.path.join(runs_dir, name)):
            continue
        row = read_run(os.path.join(runs_dir, name), source)
        if row is None:
            print(f'{name}: not finished, left out')
            continue
        seed, arm = match.group(1), ARMS[match.group(2)]
        table[(seed, arm)] = dict(row, seed=seed, arm=arm)
    arm_order = list(ARMS.values())
    return sorted(table.values(), key=lambda r: (int(r['seed']), arm_order.index(r['arm'])))


def _mean_std(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f'{values[0]:.2f}' if values else 'n/a'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def _by(rows: List[Dict[str, str]]) -> Dict[str, Dict[str, Dict[str, str]]]:
    seeds: Dict[str, Dict[str, Dict[str, str]]] = {}
    for r in rows:
        seeds.setdefault(r['seed'], {})[r['arm']] = r
    return seeds


def _number(value: str) -> str:
    return 'n/a' if value in ('', 'nan') or math.isnan(float(value)) else f'{float(value):.2f}'


def _difference_table(seeds: Dict[str, Dict[str, Dict[str, str]]], arm: str, baseline: str, title: str) -> List[str]:
    """``arm`` minus ``baseline`` per seed where both ran (last, best, many, medium), then mean ± std."""
    both = {seed: runs for seed, runs in seeds.items() if arm in runs and baseline in runs}
    if not both:
        return []
    out = ['', title, '', '| seed | last epoch | best epoch | many | medium |', '|---|---|---|---|---|']
    diffs: Dict[str, List[float]] = {k: [] for k in ('last_top1', 'best_top1', 'many', 'medium')}
    for seed, runs in both.items():
        for k in diffs:
            diffs[k].append(float(runs[arm][k]) - float(runs[baseline][k]))
        out.append(f'| {seed} | ' + ' | '.join(f'{diffs[k][-1]:+.2f}' for k in diffs) + ' |')
    out.append('| mean ± std | ' + ' | '.join(_mean_std(v) for v in diffs.values()) + ' |')
    return out


def tables(rows: List[Dict[str, str]]) -> str:
    """The markdown tables of the README and the model card."""
    seeds = _by(rows)
    arms = [a for a in ARMS.values() if any(a in s for s in seeds.values())]
    out = ['Top-1 on the 10,000 CIFAR-10 test images at the last epoch (best epoch on the same split in brackets), '
           'many / medium at the last epoch:', '',
           '| seed | ' + ' | '.join(arms) + ' |', '|---|' + '---|' * len(arms)]
    for seed, runs in seeds.items():
        cells = [f'{float(runs[a]["last_top1"]):.2f} ({float(runs[a]["best_top1"]):.2f}); '
                 f'{_number(runs[a]["many"])} / {_number(runs[a]["medium"])}' if a in runs else '—' for a in arms]
        out.append(f'| {seed} | ' + ' | '.join(cells) + ' |')
    means = [f'{_mean_std([float(s[a]["last_top1"]) for s in seeds.values() if a in s])} '
             f'({_mean_std([float(s[a]["best_top1"]) for s in seeds.values() if a in s])})' for a in arms]
    out.append('| mean ± std | ' + ' | '.join(means) + ' |')

    paired = {seed: runs for seed, runs in seeds.items() if PLAIN in runs and RSG in runs}
    out += _difference_table(seeds, RSG, PLAIN, 'Paired gain of RSG over LDAM-DRW (the same trunk up to epoch 159), '
                                                'top-1 points:')
    out += _difference_table(seeds, DP2, RSG, 'The generation phase (epochs 160-199) with the two-GPU DataParallel '
                                              'semantics (`--dp-replicas 2`) minus the single-device RSG arm, from the '
                                              'same epoch-159 checkpoint:')

    if paired:
        out += ['', 'Per-class gain of RSG over LDAM-DRW at the last epoch (classes by training images, largest '
                'first), mean ± std over seeds:', '', '| class | ' + ' | '.join(f'seed {s}' for s in paired)
                + ' | mean ± std |', '|---|' + '---|' * (len(paired) + 1)]
        for i in range(NUM_CLASSES):
            g = [float(r[RSG][f'class_{i}']) - float(r[PLAIN][f'class_{i}']) for r in paired.values()]
            out.append(f'| {i} | ' + ' | '.join(f'{v:+.2f}' for v in g) + f' | {_mean_std(g)} |')
    return '\n'.join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--runs', default=None, help='folder of s<seed>-<arm> run folders (seed_runs.sh runs/)')
    parser.add_argument('--results', default=RESULTS, help='the CSV to update')
    parser.add_argument('--source', default='benchmarks/seed_runs.sh',
                        help="what produced the runs read now (the CSV's source column)")
    args = parser.parse_args(argv)
    rows = merge(args.runs, args.results, args.source)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(tables(rows))


if __name__ == '__main__':
    main()
