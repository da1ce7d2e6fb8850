#!/usr/bin/env python3
"""Ship the two paper-recipe runs of ``benchmarks/paper_runs.sh`` as zoo tags, and write their results page.

``python benchmarks/ship_paper_runs.py`` (after both runs have finished all their epochs):

1. checks that both runs trained every epoch of their recipe and exported their backbone;
2. gives the plain LDAM-DRW run its whole history: it was forked (``train.py --fork``) from the RSG run's
   checkpoint at the end of epoch 159, and before RSG's generation phase the two runs are the same run (a fork
   equals a straight plain run bit for bit: ``tests/test_fork.py``), so its epochs before the fork are the RSG
   run's, evaluated on the same test split;
3. adds ``<arch>.ldam_drw_cifar10_lt_r100`` and ``<arch>.ldam_drw_rsg_cifar10_lt_r100`` to the zoo (last-epoch
   weights; notes: last and best epoch, many/medium/few, the command, the commit, the compute), and retires the
   20-epoch ``*_cpu20e`` tags they replace;
4. writes the tags' model card ``rsg_timm/pretrained/cifar10_lt_r100.md`` (shipped beside the weights): both runs
   beside the paper, RSG minus the baseline, what RSG costs the largest classes, the spread of top-1 over the last
   ten epochs, how to get the probabilities LDAM trained, the per-class table, per-class accuracy against training
   images
   (``*_per_class.png``, with the ``[plot]`` extra), the commands, commits and compute.

``--dry-run`` prints the page and changes no zoo file.
"""
import argparse
import dataclasses
import os
import platform
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pandas as pd
import timm
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / 'benchmarks')]

from rsg_timm.cli import run_cli  # noqa: E402
from rsg_timm.constants import FEW_SHOT_BELOW  # noqa: E402
from rsg_timm.model_card import markdown_table  # noqa: E402
from rsg_timm.models.pretrained import PRETRAINED_DIR, load_pretrained_tags  # noqa: E402
from rsg_timm.plots import plot_per_class_accuracy  # noqa: E402
from rsg_timm.posthoc import training_logit_scale  # noqa: E402
from rsg_timm.run_folder import TrainingRun, read_run  # noqa: E402
from rsg_timm.zoo_authoring import accuracy_note, add_pretrained, remove_pretrained  # noqa: E402
from reproduce import PAPER_TOP1 as _PAPER, RESULT_KEYS  # noqa: E402

# The paper's top-1 (best test epoch, ResNet-32) of each method.
PAPER_TOP1 = {method: top1 for method, (top1, _) in _PAPER['cifar10_lt_r100'].items()}
TAGS = {'ldam_drw': 'ldam_drw_cifar10_lt_r100', 'ldam_drw_rsg': 'ldam_drw_rsg_cifar10_lt_r100'}
RETIRED = ('ldam_drw_cifar10_lt_r100_cpu20e', 'ldam_drw_rsg_cifar10_lt_r100_cpu20e')


def paper_run_commits(driver: Path = REPO / 'benchmarks' / 'paper_runs.sh') -> Dict[str, str]:
    """The commits the driver trains from: ``{'ldam_drw_rsg': RSG_COMMIT, 'ldam_drw': FORK_COMMIT}``."""
    text = driver.read_text()
    found = {name: re.search(rf'^{name}=(\w+)', text, re.MULTILINE) for name in ('RSG_COMMIT', 'FORK_COMMIT')}
    return {'ldam_drw_rsg': found['RSG_COMMIT'].group(1), 'ldam_drw': found['FORK_COMMIT'].group(1)}


def _check_finished(run: TrainingRun) -> None:
    epochs = int(run.args['epochs'])
    done = -1 if run.last is None else int(run.last['epoch'])
    if done != epochs - 1 or not (run.run_dir / 'model.safetensors').is_file():
        raise ValueError(f'{run.run_dir} has trained epochs 0..{done} of {epochs} and '
                         f'{"has" if (run.run_dir / "model.safetensors").is_file() else "has no"} export: finish it '
                         f'first (bash benchmarks/paper_runs.sh continues it)')


def forked_history(plain: TrainingRun, source: TrainingRun) -> pd.DataFrame:
    """The plain run's evaluation history from epoch 0: the source run's rows before the plain run's first epoch
    (the shared trajectory), then its own. Only the columns both runs wrote are kept."""
    first = int(plain.summary['epoch'].iloc[0])
    shared = source.summary[source.summary['epoch'] < first]
    if len(shared) != first:
        raise ValueError(f'{plain.run_dir} starts at epoch {first}, but {source.run_dir} holds {len(shared)} epochs '
                         f'before it: is it the run it was forked from?')
    columns = [c for c in plain.summary.columns if c in source.summary.columns]
    return pd.concat([shared[columns], plain.summary[columns]], ignore_index=True)


def _whole_run(run: TrainingRun, history: pd.DataFrame) -> TrainingRun:
    """``run`` with its whole evaluation history (a forked run's begins in its source run), so that its best epoch is
    chosen over all epochs by its own ``--eval-metric``."""
    return dataclasses.replace(run, summary=history)


def _compute_hours(summary: pd.DataFrame, images_per_epoch: int) -> float:
    """Hours of training steps (images / measured throughput), without evaluation and pauses between sittings."""
    return float((images_per_epoch / summary['train_images_per_sec']).sum() / 3600)


def machine() -> str:
    """This machine in words (the runs train and ship on the same one): CPU model, cores, GPU, torch and timm."""
    cpuinfo = Path('/proc/cpuinfo')
    names = [line.split(':', 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith('model name')] if cpuinfo.is_file() else []
    cpu = names[0] if names else (platform.processor() or platform.machine())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    return f'{cpu}, {os.cpu_count()} CPU cores, {gpu}; torch {torch.__version__}, timm {timm.__version__}'


def _notes(method: str, run: TrainingRun, last: pd.Series, best: pd.Series, commit: str,
           hours: Dict[str, float]) -> List[str]:
    notes = [
        f'{accuracy_note(last, best)}; paper (best epoch) {PAPER_TOP1[method]:.2f}',
        f'trained with: python train.py --config configs/{run.run_dir.name}.yaml --data-dir DATA --channels-last, '
        f'at commit {commit}, on {machine()} (benchmarks/paper_runs.sh); training steps '
        + ', '.join(f'{k}: {v:.1f} h' for k, v in hours.items()),
    ]
    first = int(run.summary['epoch'].iloc[0])
    if first:
        notes.append(f'epochs 0-{first - 1} are those of the LDAM-DRW + RSG run: this run was forked from its '
                     f'epoch-{first - 1} checkpoint (train.py --fork), which equals a straight LDAM-DRW run bit for '
                     f'bit before RSG generates samples (tests/test_fork.py)')
    return notes


def _per_class_table(runs: Dict[str, TrainingRun]) -> str:
    plain, rsg = runs['ldam_drw'].per_class, runs['ldam_drw_rsg'].per_class
    rows = [(r.class_id, getattr(r, 'label', r.class_id), r.train_count, r.shot, r.accuracy, s.accuracy,
             s.accuracy - r.accuracy)
            for r, s in zip(plain.itertuples(), rsg.itertuples())]
    return markdown_table(['class', 'label', 'training images', 'group', 'LDAM-DRW', 'LDAM-DRW + RSG', 'RSG gain'],
                          rows)


def _last_epochs_spread(histories: Dict[str, pd.DataFrame], epochs: int = 10) -> str:
    """How much the last epoch's top-1 owes to the epoch: each run's top-1 over its last ``epochs`` epochs, and the
    per-epoch difference of the two (same epochs, same test split)."""
    tails = {method: h.set_index('epoch')['eval_top1'].iloc[-epochs:] for method, h in histories.items()}
    first, last = int(tails['ldam_drw_rsg'].index[0]), int(tails['ldam_drw_rsg'].index[-1])
    gap = (tails['ldam_drw_rsg'] - tails['ldam_drw']).dropna()
    rows = [(name, t.mean(), t.std(), t.min(), t.max()) for name, t in
            (('LDAM-DRW', tails['ldam_drw']), ('LDAM-DRW + RSG', tails['ldam_drw_rsg']), ('RSG minus baseline', gap))]
    return '\n'.join([
        f'Top-1 over the last {len(tails["ldam_drw_rsg"])} epochs ({first}-{last}), one seed: the spread says how '
        'much of a one-epoch number is the epoch rather than the method.',
        '',
        markdown_table(['run', 'mean', 'std', 'min', 'max'], rows),
    ])


def _head_trade(per_class: Dict[str, pd.DataFrame], head: int = 3) -> str:
    """What RSG costs the largest classes and gives the others, from the per-class table (last epoch)."""
    table = per_class['ldam_drw'][['label', 'train_count', 'accuracy']].assign(
        gain=per_class['ldam_drw_rsg']['accuracy'].to_numpy() - per_class['ldam_drw']['accuracy'].to_numpy())
    table = table.sort_values('train_count', ascending=False)
    top, rest = table.iloc[:head], table.iloc[head:]
    changes = ', '.join(f'{r.label} ({r.train_count} images) {r.gain:+.2f}' for r in top.itertuples())
    return (f'**The trade.** On the {head} largest classes RSG changes accuracy by {changes} points (mean '
            f'{top["gain"].mean():+.2f}); on the other {len(rest)} classes by {rest["gain"].mean():+.2f} on average, '
            f'from {rest["gain"].min():+.2f} to {rest["gain"].max():+.2f} (last epoch, per-class table below).')


def _shown(path: Path) -> str:
    """A run folder as the page shows it: relative to the repository when inside it (no machine paths)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def _empty_groups(per_class: pd.DataFrame) -> List[str]:
    """Why a group reads n/a: at CIFAR-10-LT rho = 100 the rarest class has 50 images, so no class is few-shot."""
    if (per_class['shot'] == 'few').any():
        return []
    return [f'No class has fewer than {FEW_SHOT_BELOW} training images (the rarest has '
            f'{int(per_class["train_count"].min())}), so the few-shot group is empty: n/a.', '']


def results_page(runs: Dict[str, TrainingRun], histories: Dict[str, pd.DataFrame], tags: Dict[str, str],
                 notes: Dict[str, List[str]], figures: Sequence[str] = ()) -> str:
    """The Markdown model card of the two tags."""
    rows, last = [], {}
    for method, name in (('ldam_drw', 'LDAM-DRW'), ('ldam_drw_rsg', 'LDAM-DRW + RSG')):
        history = histories[method]
        last[method], best = history.iloc[-1], _whole_run(runs[method], history).best
        rows.append((f'{name} (`{tags[method]}`)', *(last[method][f'eval_{k}'] for k in RESULT_KEYS),
                     f'{best["eval_top1"]:.2f} ({int(best["epoch"])})', PAPER_TOP1[method]))
    gain = [last['ldam_drw_rsg'][f'eval_{k}'] - last['ldam_drw'][f'eval_{k}'] for k in RESULT_KEYS]
    first = int(runs['ldam_drw'].summary['epoch'].iloc[0])
    rows.append(('RSG minus baseline', *gain, '', PAPER_TOP1['ldam_drw_rsg'] - PAPER_TOP1['ldam_drw']))
    verdict = 'ahead of' if gain[0] > 0 else 'not ahead of'
    scale = training_logit_scale(runs['ldam_drw_rsg'].args)
    return '\n'.join([
        '# CIFAR-10-LT (rho = 100): the official 200-epoch LDAM-DRW recipe with and without RSG',
        '',
        'Top-1 and many/medium/few (mean per-class accuracy of classes with > 100, 20..100, < 20 training images) on '
        "the 10,000 CIFAR-10 test images, **last epoch** (the zoo's weights). The best epoch is chosen on the same "
        'test split, as the official code and the papers report it: given for comparison only.',
        '',
        markdown_table(['run', 'top-1', 'many', 'medium', 'few', 'best top-1 (epoch)', 'paper (best epoch)'], rows),
        '',
        f'At this seed RSG is **{verdict}** the baseline: {gain[0]:+.2f} points top-1 (last epoch).',
        '',
        _head_trade({method: run.per_class for method, run in runs.items()}),
        '',
        '## Over the last ten epochs',
        '',
        _last_epochs_spread(histories),
        '',
        *(['## Calibrated probabilities', '',
           f'Both models have a cosine head, and LDAM trained softmax({scale:g} x logits): '
           f"`(timm.create_model('{tags['ldam_drw_rsg']}', pretrained=True)(x) * {scale:g}).softmax(-1)` are the "
           'probabilities the loss fitted (`validate.py` reports loss and ECE at that scale).', '']
          if scale != 1 else []),
        *_empty_groups(runs['ldam_drw'].per_class),
        f"The LDAM-DRW run's epochs 0-{first - 1} are the RSG run's: it was forked from the RSG run's "
        f'epoch-{first - 1} checkpoint (`train.py --fork`), which equals a straight LDAM-DRW run bit for bit before '
        'RSG generates samples (`tests/test_fork.py`).',
        '',
        '## Per class (last epoch)',
        '',
        _per_class_table(runs),
        '',
        *[f'![{name}]({name})' + '\n' for name in figures],
        '## How they were trained',
        '',
        *[f'- {tags[method]}: {line}' for method in ('ldam_drw', 'ldam_drw_rsg') for line in notes[method][1:]],
        '',
        f'Written by `python benchmarks/ship_paper_runs.py` from `{_shown(runs["ldam_drw"].run_dir)}` and '
        f'`{_shown(runs["ldam_drw_rsg"].run_dir)}`.',
        '',
    ])


def ship(rsg_run: Path, plain_run: Path, *, pretrained_dir: Path = PRETRAINED_DIR, card: str = 'cifar10_lt_r100.md',
         dry_run: bool = False) -> str:
    """Check, add to the zoo, retire the old tags and write the tags' model card; returns the card."""
    runs = {'ldam_drw_rsg': read_run(rsg_run), 'ldam_drw': read_run(plain_run)}
    for run in runs.values():
        _check_finished(run)
        if run.per_class is None:
            raise ValueError(f'{run.run_dir} has no per_class.csv: train.py writes it when a run ends')
    histories = {'ldam_drw_rsg': runs['ldam_drw_rsg'].summary,
                 'ldam_drw': forked_history(runs['ldam_drw'], runs['ldam_drw_rsg'])}
    commits = paper_run_commits()
    images = int(runs['ldam_drw_rsg'].per_class['train_count'].sum())
    arch = None
    tags, all_notes = {}, {}
    for method, run in runs.items():
        history, first = histories[method], int(run.summary['epoch'].iloc[0])
        hours = {f'epochs {first}-{int(history["epoch"].iloc[-1])}': _compute_hours(run.summary, images)}
        if first:
            shared = runs['ldam_drw_rsg'].summary.iloc[:first]
            hours[f'epochs 0-{first - 1}, shared with the RSG run'] = _compute_hours(shared, images)
        all_notes[method] = _notes(method, run, history.iloc[-1], _whole_run(run, history).best, commits[method], hours)
        notes = [*all_notes[method], f'model card: rsg_timm/pretrained/{card}']  # the tag points at the card
        if dry_run:
            tags[method] = f'<arch>.{TAGS[method]}'
            continue
        tags[method], _ = add_pretrained(run.run_dir, TAGS[method], notes=notes, run_notes=False, replace=True,
                                         pretrained_dir=pretrained_dir)
        arch = tags[method].split('.')[0]
    if not dry_run:
        for tag in RETIRED:
            if f'{arch}.{tag}' in load_pretrained_tags(pretrained_dir):
                remove_pretrained(f'{arch}.{tag}', pretrained_dir)
    figures = []
    if not dry_run:
        for method, run in runs.items():
            name = f'{Path(card).stem}_{method}_per_class.png'
            if plot_per_class_accuracy(run.per_class, str(Path(pretrained_dir) / name)):
                figures.append(name)
    page = results_page(runs, histories, tags, all_notes, figures)
    if not dry_run:
        (Path(pretrained_dir) / card).write_text(page, encoding='utf-8')
    return page


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    runs = REPO / 'output' / 'paper_runs' / 'runs'
    parser.add_argument('--rsg-run', type=Path, default=runs / 'cifar10_lt_r100_ldam_drw_rsg')
    parser.add_argument('--plain-run', type=Path, default=runs / 'cifar10_lt_r100_ldam_drw')
    parser.add_argument('--dry-run', action='store_true', help='print the notes and the page; change no file')
    args = parser.parse_args(argv)
    return ship(args.rsg_run, args.plain_run, dry_run=args.dry_run)


if __name__ == '__main__':
    print(run_cli(main))
