"""train.py's flags, each declared once with its kind: what the run is, how it runs, or where this process runs.

The kind decides, in one place, what happens to a flag's value after parsing:

* ``RECIPE`` and ``RSG`` flags shape the weights: ``--resume`` restores them, a Hub push publishes them in
  ``args.yaml``, and the model card lists those that acted. ``RSG`` ones also go to an ``rsg_*`` model as its
  ``create_model`` kwargs.
* ``RUN`` flags say how the run trains and evaluates without changing what it learns (the evaluated splits,
  ``--channels-last``): restored and published, not on the card.
* ``MACHINE`` flags belong to one process on one machine (``--device``, ``--workers``, ``--output``): never restored,
  never published.

A flag declared with ``path=True`` holds a path of this machine: whatever its kind, it is never published (the card
shows a recipe path by its file name).
"""
import argparse
import dataclasses
import enum
import functools
from typing import Any, Dict, Mapping, Tuple

import torch
from timm.utils import ParseKwargs

from .data import list_lt_datasets, list_samplers
from .losses import LDAM_DEFAULT_S, list_losses, list_reweights
from .models import rsg_model_defaults

__all__ = ['FlagKind', 'Flag', 'build_config_parser', 'build_train_parser', 'train_flags', 'flag_names', 'restored_on_resume',
           'published_args', 'RSG_FLAGS']


class FlagKind(enum.Enum):
    RECIPE = 'recipe'
    RSG = 'rsg'
    RUN = 'run'
    MACHINE = 'machine'


@dataclasses.dataclass(frozen=True)
class Flag:
    kind: FlagKind
    path: bool = False


RECIPE, RSG, RUN, MACHINE = FlagKind.RECIPE, FlagKind.RSG, FlagKind.RUN, FlagKind.MACHINE
# The defaults an rsg_* model gives its RSG module, quoted in the help of the flags that override them.
_RSG_DEFAULTS = rsg_model_defaults()


class _Declarations:
    """Adds flags to argument groups and records each one's :class:`Flag`; with ``suppress_defaults`` every default
    is ``argparse.SUPPRESS``, so parsing yields only the flags given on the command line."""

    def __init__(self, parser: argparse.ArgumentParser, suppress_defaults: bool):
        self.parser, self.suppress_defaults = parser, suppress_defaults
        self.flags: Dict[str, Flag] = {}
        self.group = parser

    def section(self, title: str) -> None:
        self.group = self.parser.add_argument_group(title)

    def __call__(self, *names: str, kind: FlagKind, path: bool = False, **kwargs: Any) -> None:
        action = self.group.add_argument(*names, **kwargs)
        if action.default not in (None, '') and 'default' not in (action.help or ''):  # argparse shows none itself
            action.help = f'{action.help or ""} (default: %(default)s)'.lstrip()
        if self.suppress_defaults:
            action.default = argparse.SUPPRESS
        self.flags[action.dest] = Flag(kind, path)


def _declare(flag: _Declarations) -> None:
    flag.section('Dataset parameters')
    flag('--data-dir', kind=RUN, path=True, default=None, metavar='DIR', help='dataset root (not needed for demo)')
    flag('--dataset', kind=RECIPE, default='demo', help=f'one of: {", ".join(list_lt_datasets())}')
    flag('--train-split', kind=RECIPE, default='train')
    flag('--val-split', kind=RUN, default='test', help='split evaluated every epoch')
    flag('--test-split', kind=RUN, default='test', help='split the --select-on val epoch is tested on')
    flag('--select-on', kind=RECIPE, default='last', choices=('last', 'val'),
         help='exported epoch: the last, or the best on --val-split, then tested on --test-split (the official '
              'large-scale protocol)')
    flag('--dataset-download', kind=MACHINE, action='store_true', help='let torchvision download CIFAR')
    flag('--check-data', kind=MACHINE, action='store_true',
         help='read every image file before training (image-file datasets; slow on large sets)')

    flag.section('Model parameters')
    flag('--model', kind=RECIPE, default='rsg_resnet32', help='any timm model; rsg_<arch> adds RSG to <arch>')
    flag('--pretrained', kind=RECIPE, action=argparse.BooleanOptionalAction, default=False,
         help="start from the backbone's timm weights (downloaded once, then from the Hugging Face cache)")
    flag('--pretrained-path', kind=RECIPE, path=True, default=None, metavar='FILE',
         help='start from these weights instead of the download, as timm: a .safetensors/.bin/.pth file of the '
              'backbone (a classifier of another class count is dropped); implies --pretrained')
    flag('--initial-checkpoint', kind=RECIPE, path=True, default='', metavar='PATH',
         help="load this checkpoint's weights into the model once built, as timm (a checkpoint of the same model, "
              'or of its backbone: RSG then starts fresh)')
    flag('--num-classes', kind=RUN, type=int, default=None, help="default: the dataset's class count")
    flag('--resume', kind=MACHINE, path=True, default='', metavar='RUN',
         help="continue a run in its own folder: the folder or a checkpoint in it; the run's flags are restored "
              'from the checkpoint (flags given explicitly win and are logged)')
    flag('--no-resume-opt', kind=MACHINE, action='store_true', help='do not restore the optimizer state')
    flag('--fork', kind=RECIPE, path=True, default='', metavar='CHECKPOINT',
         help="start a new run from another run's training checkpoint: its epoch, RNG state, and the weights and "
              'optimizer state of the tensors both models share (e.g. a plain --model branched off an rsg_* run '
              "before RSG's generation phase)")
    flag('--drop', kind=RECIPE, type=float, default=None, help='dropout before the classifier')
    flag('--drop-path', kind=RECIPE, type=float, default=None, help='stochastic depth (timm ResNets)')
    flag('-b', '--batch-size', kind=RECIPE, type=int, default=128, help='per process')
    flag('--dp-replicas', kind=RECIPE, type=int, default=1, metavar='N',
         help='train as nn.DataParallel over N GPUs computes, on one device (the official RSG CIFAR runs used 2): '
              'BatchNorm and RSG on each 1/N of the batch, running statistics of the first share, auxiliary losses '
              "averaged over shares, RSG's contrastive module not frozen; 1: one device")
    flag('-vb', '--validation-batch-size', kind=RUN, type=int, default=None)
    flag('--channels-last', kind=RUN, action='store_true')
    flag('--grad-checkpointing', kind=RUN, action='store_true')
    flag('--torchcompile', kind=RUN, nargs='?', const='inductor', default=None, metavar='BACKEND',
         help='torch.compile each backbone stage in place (opt-in; RSG stays eager, its sample count is '
              'data-dependent; a model outside the RSG families is compiled whole); about a minute of compiling '
              'on CPU')
    flag('--model-kwargs', kind=RECIPE, nargs='*', default={}, action=ParseKwargs)
    flag('--img-size', kind=RECIPE, type=int, default=None, help="input size (default: the model's)")
    flag('--interpolation', kind=RECIPE, default=None, help="resize interpolation (default: the model's)")
    flag('--crop-pct', kind=RECIPE, type=float, default=None,
         help="eval centre-crop share (default: the model's); 0.875 at 224 px is Resize 256 + crop 224")
    flag('--mean', kind=RECIPE, type=float, nargs=3, default=None, help="normalisation mean (default: the model's)")
    flag('--std', kind=RECIPE, type=float, nargs=3, default=None, help="normalisation std (default: the model's)")

    flag.section('Long-tail parameters')
    flag('--imb-type', kind=RECIPE, default=None, choices=('exp', 'step', 'none'),
         help='training class profile (default: exp for CIFAR-LT, none, the data as it is, otherwise)')
    flag('--imb-factor', kind=RECIPE, type=float, default=0.01, help='n_min / n_max, 0.01 is rho = 100')
    flag('--imb-select', kind=RECIPE, default='first', choices=('first', 'shuffle'),
         help="first: the RSG paper's CIFAR-LT subset; shuffle: LDAM-DRW's seeded subset")
    flag('--sampler', kind=RECIPE, default='instance', help=f'one of: {", ".join(list_samplers())}')
    flag('--loss', kind=RECIPE, default=None,
         help=f'one of: {", ".join(list_losses())} (default: ldam with a cosine classifier, else ce)')
    flag('--reweight', kind=RECIPE, default=None,
         help=f'one of: {", ".join(list_reweights())} (default: drw with --loss ldam, else none)')
    flag('--drw-epoch', kind=RECIPE, type=int, default=None, help='first re-weighted epoch (default 80%% in)')
    flag('--drs-epoch', kind=RECIPE, type=int, default=None,
         help='first re-sampled epoch of --sampler deferred (default 80%% in)')
    flag('--drs-shuffle', kind=RECIPE, action='store_true',
         help='--sampler deferred: before --drs-epoch, each image once per epoch in a seeded shuffle (the official '
              'scripts) instead of instance-balanced draws with replacement')
    flag('--cb-beta', kind=RECIPE, type=float, default=0.9999, help='effective-number beta')
    flag('--focal-gamma', kind=RECIPE, type=float, default=None, help='focal loss gamma (loss default 1.0)')
    flag('--ldam-max-m', kind=RECIPE, type=float, default=None, help='largest LDAM margin (loss default 0.5)')
    flag('--ldam-s', kind=RECIPE, type=float, default=None,
         help=f'LDAM logit scale, for cosine logits in [-1, 1] (loss default {LDAM_DEFAULT_S:g})')
    flag('--la-tau', kind=RECIPE, type=float, default=None, help='logit-adjusted loss tau (loss default 1.0)')
    flag('--cosine-classifier', kind=RECIPE, action=argparse.BooleanOptionalAction, default=None,
         help='cosine classifier (default: on the CIFAR ResNets without --loss, or with --loss ldam where the model '
              'supports it, as LDAM/RSG do); it makes --loss ldam (+ drw) the default')
    flag('--official-init', kind=RECIPE, action='store_true',
         help='timm ResNets as the official RSG ImageNet-family code: no zero-init of the last BN of each block, RSG '
              're-initialised by the backbone loop (rsg_init=backbone)')

    flag.section('RSG parameters (rsg_* models; defaults from the model)')
    flag('--rsg-stage', kind=RSG, type=int, default=None,
         help='insert RSG after this backbone stage (model default: 2 for CIFAR, 3 for ImageNet ResNets)')
    flag('--rsg-n-center', kind=RSG, type=int, default=None,
         help=f'class centres per class (model default {_RSG_DEFAULTS["rsg_n_center"]})')
    flag('--rsg-contrastive-dim', kind=RSG, type=int, default=None,
         help=f"width of RSG's contrastive pair classifier (model default {_RSG_DEFAULTS['rsg_contrastive_dim']})")
    flag('--rsg-strength', kind=RSG, type=float, default=None,
         help="transfer strength in (0, 1]: the share of the batch's head/tail segments that generate rare-class "
              f"samples; 1 generates the most the batch holds (model default {_RSG_DEFAULTS['rsg_strength']:g})")
    flag('--rsg-epoch-thresh', kind=RSG, type=int, default=None,
         help='last CESC-only epoch; generation starts after it (default 80%% in, -1)')
    flag('--rsg-head-ratio', kind=RSG, type=float, default=None,
         help=f'share of the most frequent classes RSG treats as head (model default '
              f'{_RSG_DEFAULTS["rsg_head_ratio"]:g})')
    flag('--rsg-cesc-weight', kind=RSG, type=float, default=None,
         help=f'weight of the CESC loss (centre estimation, sample contrast; model default '
              f'{_RSG_DEFAULTS["rsg_cesc_weight"]:g})')
    flag('--rsg-mv-weight', kind=RSG, type=float, default=None,
         help=f'weight of the MV (maximised vector) loss (model default {_RSG_DEFAULTS["rsg_mv_weight"]:g})')

    flag.section('Optimizer parameters')
    flag('--opt', kind=RECIPE, default='momentum',
         help="momentum = plain SGD with momentum, as the RSG code; timm's sgd is Nesterov, with which RSG's centres "
              'diverge at lr 0.1')
    flag('--lr', kind=RECIPE, type=float, default=0.1)
    flag('--momentum', kind=RECIPE, type=float, default=0.9)
    flag('--weight-decay', kind=RECIPE, type=float, default=2e-4)
    flag('--decay-all-params', kind=RECIPE, action='store_true',
         help='weight-decay biases and norm weights too, as the official RSG/LDAM code does')
    flag('--clip-grad', kind=RECIPE, type=float, default=None)
    flag('--clip-mode', kind=RECIPE, default='norm')

    flag.section('Learning rate schedule parameters')
    flag('--sched', kind=RECIPE, default='multistep')
    flag('--epochs', kind=RECIPE, type=int, default=30)
    flag('--warmup-epochs', kind=RECIPE, type=int, default=4,
         help='with --warmup-lr 0.02: the RSG warm-up (scaled to a fifth of a shorter run)')
    flag('--warmup-lr', kind=RECIPE, type=float, default=0.02)
    flag('--min-lr', kind=RECIPE, type=float, default=0.0)
    flag('--decay-milestones', kind=RECIPE, type=int, nargs='+', default=None,
         help='multistep milestones; timm applies milestone m from epoch m - 1 (default: 80%% and 90%% in, so the LR '
              'drops one epoch before DRW and generation, as the RSG code)')
    flag('--decay-epochs', kind=RECIPE, type=float, default=30)
    flag('--decay-rate', '--dr', kind=RECIPE, type=float, default=0.01)
    flag('--cooldown-epochs', kind=RECIPE, type=int, default=0)

    flag.section('Device parameters')
    flag('--device', kind=MACHINE, default='cuda' if torch.cuda.is_available() else 'cpu')
    flag('--amp', kind=RECIPE, action='store_true', help='mixed precision with --amp-dtype')
    flag('--amp-dtype', kind=RECIPE, default='bfloat16', choices=('bfloat16', 'float16'))

    flag.section('Miscellaneous parameters')
    flag('--seed', kind=RECIPE, type=int, default=42)
    flag('--log-interval', kind=MACHINE, type=int, default=50, help='log every this many steps')
    flag('--log-seconds', kind=MACHINE, type=float, default=10.0,
         help='without a progress bar, also log once this many seconds have passed (0: off)')
    flag('--checkpoint-hist', kind=RUN, type=int, default=3, help='ranked checkpoints the run folder keeps')
    flag('-j', '--workers', kind=MACHINE, type=int, default=2, help='loader workers for file-based datasets')
    flag('--output', kind=MACHINE, path=True, default='', metavar='DIR',
         help='runs go to OUTPUT/<experiment> (default ./output/train)')
    flag('--experiment', kind=MACHINE, default='',
         help='run folder name, which must be new (default: <time>-<model>-<dataset>[-<n>], unique)')
    flag('--eval-metric', kind=RECIPE, default='top1')
    flag('--no-progress', kind=MACHINE, action='store_true', help='log lines instead of a progress bar')


def _add_config_flag(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument('-c', '--config', default=default, metavar='FILE',
                        help='YAML file whose keys are argument names (explicit flags win)')


def build_config_parser() -> argparse.ArgumentParser:
    """The parser train.py reads ``--config`` with first, so that the file's keys become the defaults of the rest."""
    parser = argparse.ArgumentParser(description='Training config', add_help=False)
    _add_config_flag(parser, '')
    return parser


def _declared(suppress_defaults: bool) -> _Declarations:
    parser = argparse.ArgumentParser(description='rsg_timm long-tailed training')
    # shown by --help; it is never stored with a run
    _add_config_flag(parser, argparse.SUPPRESS if suppress_defaults else '')
    flags = _Declarations(parser, suppress_defaults)
    _declare(flags)
    return flags


def build_train_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """train.py's parser; ``suppress_defaults=True`` parses to only the flags given (see :class:`_Declarations`)."""
    return _declared(suppress_defaults).parser


@functools.lru_cache(maxsize=None)
def train_flags() -> Mapping[str, Flag]:
    """Every train.py flag (its ``dest``) with its kind, in the order of ``--help``; ``--config`` is not one."""
    return dict(_declared(False).flags)


def flag_names(*kinds: FlagKind) -> Tuple[str, ...]:
    """The flags of these kinds (all flags without arguments), in the order of ``--help``."""
    return tuple(name for name, flag in train_flags().items() if not kinds or flag.kind in kinds)


def restored_on_resume() -> Tuple[str, ...]:
    """The flags ``--resume`` takes back from the checkpoint: all but this process's own."""
    return flag_names(RECIPE, RSG, RUN)


def published_args(args: Mapping[str, Any]) -> Dict[str, Any]:
    """The part of a run's recorded flags that may leave the machine: no machine flag and no path; keys that are not
    (or no longer) train.py flags are left out too, as nothing says what they hold."""
    flags = train_flags()
    return {k: v for k, v in args.items()
            if k in flags and flags[k].kind is not MACHINE and not flags[k].path}


# The flags of an rsg_* model's RSG module (they go to timm.create_model as its kwargs).
RSG_FLAGS = flag_names(RSG)
