"""A train.py run folder: choosing and creating it (never two runs in one folder), trimming its ``summary.csv`` when
a run resumes, and reading it back for model cards and result tables.

A run folder holds ``args.yaml`` (the resolved flags), ``summary.csv`` (one row per finished epoch), the training
checkpoints (``last.pth.tar``, ``checkpoint-<epoch>.pth.tar``, ``model_best.pth.tar``), and once the run ends the
export (``model.safetensors``, ``config.json``), ``per_class.csv`` and the figures; ``.train.lock`` names the process
writing it (:func:`lock_run_dir`).
"""
import argparse
import contextlib
import csv
import dataclasses
import fcntl
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pandas as pd
import yaml

from .atomic import atomic_write

__all__ = ['TrainingRun', 'read_run', 'read_args_yaml', 'run_finished', 'died_before_first_checkpoint', 'new_run_dir',
           'create_run_dir', 'lock_run_dir', 'truncate_summary', 'append_summary', 'LOCK_FILE']

LOCK_FILE = '.train.lock'

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingRun:
    """What a train.py run folder records; ``summary`` / ``per_class`` are None when the run has not written them.

    Args:
        run_dir: the run folder.
        args: the resolved training arguments (``args.yaml``).
        summary: one row per finished epoch (``summary.csv``).
        per_class: the last epoch's per-class accuracy (``per_class.csv``).
    """
    run_dir: Path
    args: Dict[str, Any]
    summary: Optional[pd.DataFrame]
    per_class: Optional[pd.DataFrame]

    @property
    def last(self) -> Optional[pd.Series]:
        """The last finished epoch's row."""
        return None if self.summary is None or self.summary.empty else self.summary.iloc[-1]

    @property
    def best(self) -> Optional[pd.Series]:
        """The row of the best epoch by the run's ``--eval-metric``, chosen on the evaluated (test) split as the
        checkpoint saver did (first of equals)."""
        if self.last is None:
            return None
        metric = self.summary[f'eval_{self.args.get("eval_metric", "top1")}']
        return self.summary.loc[metric.idxmin() if self.args.get('eval_metric') == 'loss' else metric.idxmax()]


def read_run(run_dir: Any) -> TrainingRun:
    """Read a run folder written by train.py.

    Raises:
        FileNotFoundError: the folder is missing or has no ``args.yaml`` (so it is not a train.py run).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f'run folder {str(run_dir)!r} does not exist; pass output/train/<experiment> as '
                                f'written by train.py')
    if not (run_dir / 'args.yaml').is_file():
        raise FileNotFoundError(f'{str(run_dir)!r} is not a train.py run folder: it has no args.yaml (a run holds '
                                f'args.yaml, summary.csv, last.pth.tar and its model.safetensors + config.json)')
    args = read_args_yaml(run_dir / 'args.yaml')
    tables = {name: pd.read_csv(run_dir / f'{name}.csv') if (run_dir / f'{name}.csv').is_file() else None
              for name in ('summary', 'per_class')}
    return TrainingRun(run_dir, args, **tables)


def read_args_yaml(path: Any) -> Dict[str, Any]:
    """A run's recorded flags; an empty or broken file is refused, as everything read from it would silently fall
    back to defaults."""
    try:
        args = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        args = e
    if not isinstance(args, dict) or not args:
        raise ValueError(f'{path} is empty or not a mapping of flags, so the run\'s recipe is unknown; in a run '
                         f'folder, python train.py --resume {Path(path).parent} writes it again from the checkpoint')
    return args


def run_finished(run_dir: Any) -> bool:
    """Whether a run wrote all it writes at its end: the export, the figures, then ``per_class.csv``, each replaced
    whole; and its ``args.yaml`` is intact (a resume writes it again). A run stopped before (a kill, a full disk) is
    completed by ``--resume``."""
    run_dir = Path(run_dir)
    args_yaml = run_dir / 'args.yaml'
    return (run_dir / 'per_class.csv').is_file() and args_yaml.is_file() and args_yaml.stat().st_size > 0


def died_before_first_checkpoint(run_dir: str) -> bool:
    """True for a run folder (or an empty folder) with no checkpoint and no export: a run killed or failed before
    its first epoch ended, which has nothing to resume and nothing to lose, so a new run may start there."""
    if not os.path.isdir(run_dir):
        return False
    names = [name for name in os.listdir(run_dir) if not name.startswith('.')]  # not the lock or partial writes
    return (not names or 'args.yaml' in names) and not any(
        name.endswith('.pth.tar') or name == 'model.safetensors' for name in names)


def new_run_dir(args: argparse.Namespace) -> str:
    """The run folder; refuses, before any work, a named folder that exists and is not the one being resumed."""
    root = args.output or os.path.join('output', 'train')
    if os.path.exists(root) and not os.path.isdir(root):
        raise ValueError(f'--output {root} is a file; pass a folder (the run goes to OUTPUT/<experiment>)')
    if args.resume:
        run_dir = os.path.dirname(os.path.abspath(args.resume))
        named = os.path.join(root, args.experiment or os.path.basename(run_dir))
        if (args.output or args.experiment) and os.path.realpath(named) != os.path.realpath(run_dir):
            raise ValueError(f'--resume continues the run in its own folder {run_dir}, but --output/--experiment '
                             f'name {named}: drop them (--fork starts a new run from a checkpoint)')
        return run_dir
    if args.experiment:
        run_dir = os.path.join(root, args.experiment)
        if os.path.exists(run_dir) and not died_before_first_checkpoint(run_dir):
            raise ValueError(f'run folder {run_dir} already exists and holds another run\'s results: choose another '
                             f'--experiment, or continue that run with --resume {run_dir}')
        return run_dir
    name = f'{time.strftime("%Y%m%d-%H%M%S")}-{args.model}-{args.dataset}'.replace('/', '_').replace(':', '_')
    return os.path.join(root, name)


def create_run_dir(run_dir: str, args: argparse.Namespace) -> str:
    """Create the run folder atomically, so that no two runs share it; a default name gets a free ``-<n>`` suffix."""
    if args.resume:
        return run_dir
    for n in range(1000):
        candidate = run_dir if n == 0 else f'{run_dir}-{n}'
        try:
            os.makedirs(os.path.dirname(run_dir) or '.', exist_ok=True)
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            if args.experiment and died_before_first_checkpoint(candidate):
                _logger.warning(f'{candidate} holds a run that stopped before its first checkpoint; starting it again '
                                f'there')
                return candidate
            if args.experiment:  # created by another run since new_run_dir checked it
                raise ValueError(f'run folder {run_dir} was just created by another run: choose another '
                                 f'--experiment') from None
        except OSError as e:  # read-only, no permission, a file in the way, a full disk
            raise ValueError(f'cannot create the run folder {candidate} ({e.strerror}): pass an --output you can '
                             f'write to') from None
    raise ValueError(f'no free run folder name {run_dir}-<n>; pass --experiment')


@contextlib.contextmanager
def lock_run_dir(run_dir: str) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the block runs, so that one run folder has one writer: a second ``--resume``
    of a running run would interleave ``summary.csv`` rows and overwrite the other's checkpoints.

    The lock is an ``flock`` on ``.train.lock``, which the kernel drops when its holder dies, so a run killed with
    ``kill -9`` leaves no stale lock; the file names the holder for the message.
    """
    try:
        lock = open(os.path.join(run_dir, LOCK_FILE), 'a+')
    except OSError as e:
        raise ValueError(f'cannot write to the run folder {run_dir} ({e.strerror}); make it writable') from None
    with lock as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or 'another process'
            raise ValueError(f'{run_dir} is in use by {holder}: one run folder has one writer; wait for that run to '
                             f'end or stop it, then --resume {run_dir}') from None
        f.seek(0)
        f.truncate()
        f.write(f'pid {os.getpid()} on {socket.gethostname()} since {time.strftime("%Y-%m-%d %H:%M:%S")}\n')
        f.flush()
        yield


def truncate_summary(path: str, start_epoch: int) -> None:
    """Drop ``summary.csv`` rows from ``start_epoch`` on: a kill after the summary line but before its checkpoint, or
    a resume from an earlier checkpoint, would otherwise leave those epochs twice."""
    if not os.path.isfile(path):
        return
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, [r for r in reader if int(r['epoch']) < start_epoch]
    with atomic_write(path, newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def append_summary(path: str, epoch: int, train_metrics: Dict[str, Any], eval_metrics: Dict[str, Any],
                   lr: float) -> None:
    """Append an epoch's row to ``summary.csv`` (timm's columns: ``epoch``, ``train_*``, ``eval_*``, ``lr``).

    A run resumed by a newer rsg_timm may report a column its earlier epochs did not (e.g. ``eval_logit_scale``);
    the file is then rewritten once with the union of the columns, the earlier rows left empty there, so that no
    row is written under another column's header.
    """
    row = {'epoch': epoch, **{f'train_{k}': v for k, v in train_metrics.items()},
           **{f'eval_{k}': v for k, v in eval_metrics.items()}, 'lr': lr}
    fields, rows = list(row), []
    if os.path.isfile(path) and os.path.getsize(path):
        with open(path, newline='') as f:
            reader = csv.DictReader(f)
            old_fields, rows = reader.fieldnames or [], list(reader)
        if set(fields) <= set(old_fields):
            with open(path, 'a', newline='') as f:
                csv.DictWriter(f, fieldnames=old_fields, restval='').writerow(row)
            return
        fields = [*old_fields, *(k for k in fields if k not in old_fields)]
    with atomic_write(path, newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval='')
        writer.writeheader()
        writer.writerows([*rows, row])
