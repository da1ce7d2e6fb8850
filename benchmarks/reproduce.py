#!/usr/bin/env python3
"""Reproduce the RSG paper's CIFAR-LT table: train a set of recipes from configs/ and tabulate them beside the paper.

``python benchmarks/reproduce.py cifar10_lt_r100 --data-dir DATA`` trains the set's six recipes (CE, Focal and
LDAM-DRW, each without and with RSG: ``configs/cifar10_lt_r100_{ce,ce_rsg,...}.yaml``), one train.py process each,
reads every run's ``summary.csv`` (validate.py's metrics, evaluated each epoch on the balanced test split) and writes
``benchmarks/results/<set>.csv`` and ``<set>.md``. Both the **last epoch** (the honest number, and the weights a run
exports) and the **best test epoch** (what the official RSG / LDAM-DRW code reports, so the paper's numbers compare
to it) are given, labelled. A finished run folder is reused, so an interrupted reproduction picks up where it stopped.

``--epochs E`` scales the 200-epoch schedule as train.py does (``rsg_timm.recipes.scaled_schedule``: LR decay from
80% and 90% in, DRW from 80%, RSG generation after 80% minus one), passing those flags explicitly. Arguments after
``--`` go to every train.py run.
"""
import argparse
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rsg_timm.cli import run_cli  # noqa: E402
from rsg_timm.metrics import SHOT_GROUPS  # noqa: E402
from rsg_timm.model_card import markdown_table  # noqa: E402
from rsg_timm.models import is_rsg_model  # noqa: E402
from rsg_timm.recipes import scaled_schedule  # noqa: E402
from rsg_timm.run_folder import read_run, run_finished  # noqa: E402

_logger = logging.getLogger('reproduce')

# The recipes of a set, in table order: the configs/make_cifar_recipes.py losses, each without and with RSG.
METHODS = ('ce', 'ce_rsg', 'focal', 'focal_rsg', 'ldam_drw', 'ldam_drw_rsg')
_METHOD_NAMES = {'ce': 'CE', 'focal': 'Focal', 'ldam_drw': 'LDAM-DRW'}
# Published top-1 accuracy (%), best test epoch, ResNet-32; see shared docs reference/anchors-accuracy.md §1a, §2a.
PAPER_TOP1: Dict[str, Dict[str, Tuple[float, str]]] = {
    'cifar10_lt_r100': {
        'ce': (70.36, 'LDAM-DRW paper, Err 29.64 (recalled)'),
        'focal': (70.38, 'LDAM-DRW paper, Err 29.62 (recalled)'),
        'ldam_drw': (77.03, 'LDAM-DRW paper, Err 22.97'),
        'ldam_drw_rsg': (79.95, 'RSG paper, Err 20.05 (via GZWQ/Awesome-Long-Tailed)'),
    },
    'cifar10_lt_r10': {
        'ldam_drw': (88.16, 'LDAM-DRW paper, Err 11.84'),
    },
    'cifar100_lt_r100': {
        'ldam_drw': (42.04, 'LDAM-DRW paper, Err 57.96'),
        'ldam_drw_rsg': (44.55, 'RSG paper, Err 55.45 (via GZWQ; Papers with Code: 55.5)'),
    },
    'cifar100_lt_r50': {
        'ldam_drw_rsg': (48.5, 'RSG paper, Err 51.5 (Papers with Code)'),
    },
    'cifar100_lt_r10': {
        'ldam_drw': (58.71, 'LDAM-DRW paper, Err 41.29'),
    },
}
# The accuracies of a result row: top-1 and the shot groups.
RESULT_KEYS = ('top1', *SHOT_GROUPS)


def _method_name(method: str) -> str:
    base = method[:-len('_rsg')] if method.endswith('_rsg') else method
    return _METHOD_NAMES.get(base, base) + ('-RSG' if base != method else '')


def _train_main() -> Callable[[Sequence[str]], dict]:
    """train.py's ``main``, for ``--in-process``."""
    spec = importlib.util.spec_from_file_location('_reproduce_train', REPO / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def find_recipes(set_name: str, config_dir: Path, only: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """``{method: config}`` of a set, in :data:`METHODS` order, optionally only some methods.

    Raises:
        ValueError: an unknown method in ``only``, or a set without any recipe (naming the sets there are).
    """
    unknown = sorted(set(only or ()) - set(METHODS))
    if unknown:
        raise ValueError(f'--only {unknown}: choose from {list(METHODS)}')
    recipes = {m: config_dir / f'{set_name}_{m}.yaml' for m in (only or METHODS)}
    recipes = {m: path for m, path in recipes.items() if path.is_file()}
    if not recipes:
        sets = sorted({p.stem[:-len(m) - 1] for p in config_dir.glob('*.yaml') for m in METHODS
                       if p.stem.endswith(f'_{m}')})
        raise ValueError(f'no recipes {set_name}_<method>.yaml in {config_dir}; sets there: {sets}')
    return recipes


def schedule_flags(config: Path, epochs: int) -> List[str]:
    """The flags that scale ``config``'s schedule to ``epochs``, by train.py's own rule
    (:func:`rsg_timm.recipes.scaled_schedule`)."""
    model = (yaml.safe_load(config.read_text()) or {}).get('model')
    if model is None:
        raise ValueError(f'{config} names no model: a recipe sets model: <arch>')
    schedule = scaled_schedule(epochs)
    flags = ['--epochs', str(epochs), '--decay-milestones', *map(str, schedule['decay_milestones']),
             '--drw-epoch', str(schedule['drw_epoch'])]
    if is_rsg_model(model):
        flags += ['--rsg-epoch-thresh', str(schedule['rsg_epoch_thresh'])]
    return flags


def _run_name(config: Path, epochs: Optional[int]) -> str:
    return config.stem + (f'-e{epochs}' if epochs else '')


def _result_row(set_name: str, method: str, run_dir: Path) -> Dict[str, object]:
    run = read_run(run_dir)
    last, best = run.last, run.best
    paper, source = PAPER_TOP1.get(set_name, {}).get(method, (float('nan'), ''))
    row: Dict[str, object] = dict(set=set_name, method=_method_name(method), recipe=run_dir.name,
                                  epochs=int(last['epoch']) + 1)
    row.update({f'{k}_last': float(last[f'eval_{k}']) for k in RESULT_KEYS})
    row.update({f'{k}_best': float(best[f'eval_{k}']) for k in RESULT_KEYS})
    row.update(best_epoch=int(best['epoch']), paper_top1_best=paper, paper_source=source, run_dir=str(run_dir))
    return row


def _markdown(set_name: str, results: pd.DataFrame) -> str:
    rows = [(r.method, r.epochs, r.top1_last, r.many_last, r.medium_last, r.few_last,
             f'{r.top1_best:.2f} (ep {r.best_epoch})', r.paper_top1_best, r.paper_source or '—')
            for r in results.itertuples()]
    return '\n'.join([
        f'# Reproduction: {set_name}',
        '',
        'Top-1 accuracy (%) on the balanced test split; many/medium/few: mean per-class accuracy of classes with '
        '> 100, 20..100, < 20 training images. **Last** is the last epoch (no selection on the test set: the honest '
        'number). **Best** is the best epoch chosen on the test split, as the official RSG and LDAM-DRW code report '
        'and as the paper numbers are.',
        '',
        markdown_table(['method', 'epochs', 'top-1 last', 'many last', 'medium last', 'few last',
                        'top-1 best (epoch)', 'paper top-1 (best epoch)', 'paper source'], rows),
        '',
        f'Written by `python benchmarks/reproduce.py {set_name}`; runs: '
        + ', '.join(f'`{r.run_dir}`' for r in results.itertuples()) + '.',
        '',
    ])


def _parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index('--') if '--' in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('set', metavar='SET', help='recipe set, a configs/ prefix such as cifar10_lt_r100')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root passed to train.py')
    parser.add_argument('--epochs', type=int, default=None, help='scale the schedule to E epochs (default: recipe)')
    parser.add_argument('--only', nargs='+', default=None, metavar='METHOD', help=f'some of {", ".join(METHODS)}')
    parser.add_argument('--config-dir', type=Path, default=REPO / 'configs')
    parser.add_argument('--output', type=Path, default=REPO / 'output' / 'reproduce',
                        help='runs go to OUTPUT/<set>/<recipe>[-e<E>]')
    parser.add_argument('--results-dir', type=Path, default=REPO / 'benchmarks' / 'results')
    parser.add_argument('--in-process', action='store_true',
                        help="call train.py's main here instead of one process per run (faster start, no isolation)")
    parser.add_argument('--dry-run', action='store_true', help='print the train.py commands and stop')
    return parser.parse_args(argv[:split]), argv[split + 1:]


def main(argv: Optional[Sequence[str]] = None) -> Optional[pd.DataFrame]:
    args, train_extra = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    recipes = find_recipes(args.set, args.config_dir, args.only)
    runs, failed = {}, []
    for method, config in recipes.items():
        run_dir = args.output / args.set / _run_name(config, args.epochs)
        train_args = ['--config', str(config), '--output', str(run_dir.parent), '--experiment', run_dir.name,
                      *(['--data-dir', args.data_dir] if args.data_dir else []),
                      *(schedule_flags(config, args.epochs) if args.epochs else []), *train_extra]
        command = [sys.executable, str(REPO / 'train.py'), *train_args]
        runs[method] = run_dir
        if args.dry_run:
            print(subprocess.list2cmdline(command))
        elif run_finished(run_dir):
            _logger.info(f'{method}: {run_dir} is finished; reusing it (delete it to train again)')
        else:
            _logger.info(f'{method}: {subprocess.list2cmdline(command)}')
            if args.in_process:
                _train_main()(train_args)
            elif subprocess.run(command, cwd=REPO).returncode != 0:
                _logger.error(f'{method}: train.py failed; leaving it out of the table')
                failed.append(method)
    if args.dry_run:
        return None

    results = pd.DataFrame([_result_row(args.set, m, run) for m, run in runs.items() if m not in failed])
    args.results_dir.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.results_dir / f'{args.set}.csv', index=False)
    (args.results_dir / f'{args.set}.md').write_text(_markdown(args.set, results), encoding='utf-8')
    print(_markdown(args.set, results))
    if failed:
        raise SystemExit(f'{len(failed)} recipe(s) failed: {failed}')
    return results


if __name__ == '__main__':
    run_cli(main)
