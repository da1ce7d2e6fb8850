"""Describe a train.py run folder as a Hugging Face model card (``README.md``).

The card says what a long-tail reader needs to judge the weights, and nothing the run did not do: Hub metadata
(``model-index`` with last-epoch top-1 and many/medium/few, ``base_model`` for a ``--pretrained`` start), the flags
that acted on the weights (from ``args.yaml``; image size first, none that had no effect), the method named only for
the phases that ran (a run that ended before DRW, deferred re-sampling or RSG's generation says so), the training
class profile and its many/medium/few groups, the last epoch's accuracy (the honest number) beside the best epoch
(labelled as selected on the evaluated split, named as on disk, which is what the RSG and LDAM-DRW papers report),
ECE at the logit scale the loss trained, the per-class table, how to train it again, how to use it (top-5
probabilities at that scale, pooled features), the citation and the licence. Pure text: no network, no writes.
"""
import dataclasses
import importlib.metadata
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pandas as pd
import yaml
from timm.models import get_pretrained_cfg, split_model_name_tag

from .constants import CLASS_COUNTS_KEY, FEW_SHOT_BELOW, LOGIT_SCALE_KEY, MANY_SHOT_ABOVE
from .data.list_lt import LIST_LT_SPECS, folder_split_dir
from .metrics import shot_split
from .models import COSINE_CLASSIFIER_KEY, backbone_arch, is_rsg_model
from .posthoc import training_logit_scale
from .run_folder import TrainingRun
from .train_flags import FlagKind, flag_names, train_flags
from .version import __version__

__all__ = ['create_model_card', 'markdown_table', 'RSG_BIBTEX']

RSG_BIBTEX = """@inproceedings{wang2021rsg,
  title     = {RSG: A Simple but Effective Module for Learning Imbalanced Datasets},
  author    = {Wang, Jianfeng and Lukasiewicz, Thomas and Hu, Xiaolin and Cai, Jianfei and Xu, Zhenghua},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2021}
}"""
_TIMM_BIBTEX = """@misc{rw2019timm,
  author       = {Ross Wightman},
  title        = {PyTorch Image Models},
  year         = {2019},
  publisher    = {GitHub},
  journal      = {GitHub repository},
  doi          = {10.5281/zenodo.4414861},
  howpublished = {\\url{https://github.com/huggingface/pytorch-image-models}}
}"""
# Hub datasets the long-tailed sets are drawn from (the card's ``datasets`` metadata); others have no Hub id.
_HUB_DATASETS = {'demo': 'uoft-cs/cifar10', 'cifar10_lt': 'uoft-cs/cifar10', 'cifar100_lt': 'uoft-cs/cifar100',
                 'imagenet_lt': 'ILSVRC/imagenet-1k'}
_DATASET_TITLES = {'demo': 'CIFAR-10-LT demo', 'cifar10_lt': 'CIFAR-10-LT', 'cifar100_lt': 'CIFAR-100-LT',
                   'imagenet_lt': 'ImageNet-LT', 'places_lt': 'Places-LT', 'inat2018': 'iNaturalist 2018'}
_TAGS = ('image-classification', 'timm', 'long-tail')
# The benchmarks whose evaluation splits are balanced (a folder_lt val/ folder is whatever the user put there).
_BALANCED_EVAL = ('demo', 'cifar10_lt', 'cifar100_lt', 'imagenet_lt', 'places_lt', 'inat2018')
_RSG_PAPER = 'https://arxiv.org/abs/2106.09859'
# Datasets with a fixed class profile: train.py's --imb-* flags do not apply, so the card must not show them.
_FIXED_PROFILE_DATASETS = ('demo',)


def _cut(args: Dict[str, Any]) -> bool:
    """Whether the --imb-* flags cut the training set (not for the demo's fixed profile or --imb-type none)."""
    return args.get('dataset') not in _FIXED_PROFILE_DATASETS and args.get('imb_type') not in (None, 'none')


def _loss(*names: str) -> Callable[[Dict[str, Any]], bool]:
    return lambda a: a.get('loss') in names


def _sgd_family(args: Dict[str, Any]) -> bool:
    """Optimizers that read --momentum (timm's SGD variants and RMSProp); Adam-family ones ignore it."""
    opt = str(args.get('opt', '')).lower().split('_')[-1]
    return any(name in opt for name in ('sgd', 'momentum', 'nesterov', 'rmsprop', 'lars'))


# When a recipe flag acted on the weights, for those that do not always (a flag that did not act, e.g. --momentum
# under AdamW, is left out of the card). Unset (None) and off (False) flags are left out too.
_ACTS_WHEN: Dict[str, Callable[[Dict[str, Any]], bool]] = {
    'train_split': lambda a: a.get('train_split') != 'train',
    'imb_type': _cut, 'imb_factor': _cut, 'imb_select': _cut,
    'drs_epoch': lambda a: a.get('sampler') == 'deferred', 'drs_shuffle': lambda a: a.get('sampler') == 'deferred',
    'focal_gamma': _loss('focal'), 'ldam_max_m': _loss('ldam'), 'ldam_s': _loss('ldam'),
    'la_tau': _loss('logit_adjusted'),
    'drw_epoch': lambda a: a.get('reweight') == 'drw',
    'cb_beta': lambda a: a.get('reweight') in ('cb', 'drw') or a.get('sampler') == 'deferred',
    'dp_replicas': lambda a: a.get('dp_replicas') != 1,
    'momentum': _sgd_family, 'clip_mode': lambda a: bool(a.get('clip_grad')),
    'decay_milestones': lambda a: a.get('sched') == 'multistep', 'decay_epochs': lambda a: a.get('sched') == 'step',
    'decay_rate': lambda a: a.get('sched') in ('step', 'multistep', 'plateau'),
    'min_lr': lambda a: bool(a.get('min_lr')) and a.get('sched') not in ('step', 'multistep'),
    'warmup_lr': lambda a: bool(a.get('warmup_epochs')), 'cooldown_epochs': lambda a: bool(a.get('cooldown_epochs')),
    'amp_dtype': lambda a: bool(a.get('amp')),
    'select_on': lambda a: a.get('select_on') != 'last', 'eval_metric': lambda a: a.get('select_on') == 'val',
}
# The recipe rows: train.py's recipe flags in --help order; the image size has a row of its own, first.
_RECIPE_ROWS = tuple(name for name in flag_names(FlagKind.RECIPE, FlagKind.RSG) if name != 'img_size')
_RESULT_KEYS = ('top1', 'top5', 'many', 'medium', 'few', 'ece')
# Figures a run folder may hold (train.py writes them with the [plot] extra), shown in the card when present.
_FIGURES = (('curves.png', 'Training curves'), ('per_class.png', 'Per-class accuracy against training images'))
_MAX_TABLE_CLASSES = 100  # larger per-class tables stay in per_class.csv


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table; floats get two decimals and NaN reads ``n/a``."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return 'n/a' if math.isnan(v) else f'{v:.2f}'
        return str(v).replace('|', '\\|')
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


@dataclasses.dataclass
class _Phases:
    """The method as it ran: the named parts (loss, re-weighting, sampling, RSG) and why any configured one is not
    among them."""
    method: str
    rsg: bool
    never_started: List[str]


def _last_epoch(run: TrainingRun) -> int:
    """The last trained epoch: recorded in summary.csv, else the configured last one."""
    return int(run.last['epoch']) if run.last is not None else int(run.args.get('epochs', 1)) - 1


def _phases(run: TrainingRun) -> _Phases:
    """Name only what acted on the weights: DRW, deferred re-sampling and RSG's generation start late in a run, and a
    run shorter than their switch never reached them."""
    args, last = run.args, _last_epoch(run)
    parts, never = [str(args.get('loss', '?')).upper()], []

    def started(name: str, first: Optional[int]) -> bool:
        if first is None or int(first) <= last:
            return True
        never.append(f'{name} was set to start at epoch {int(first)}, but the run ended at epoch {last}: it never '
                     f'acted on these weights.')
        return False

    reweight, sampler = args.get('reweight'), args.get('sampler')
    if reweight not in (None, 'none') and started(str(reweight).upper(), args.get('drw_epoch')
                                                   if reweight == 'drw' else None):
        parts.append(str(reweight).upper())
    if sampler == 'deferred':
        if started('Deferred re-sampling (DRS)', args.get('drs_epoch')):
            parts.append('deferred re-sampling')
    elif sampler not in (None, 'instance'):
        parts.append(f'{sampler} sampling')
    rsg = False
    if is_rsg_model(str(args.get('model', ''))):
        generated = run.summary.get('train_generated') if run.summary is not None else None
        thresh = args.get('rsg_epoch_thresh')
        if generated is not None and generated.notna().any():
            rsg = bool((generated > 0).any())
            if not rsg:
                never.append(f"RSG generated no sample in epochs 0-{last} (generation starts after epoch "
                             f"{thresh}): only its CESC loss trained, so these are not RSG weights.")
        else:
            rsg = started("RSG's sample generation", None if thresh is None else int(thresh) + 1)
    if rsg:
        parts.append('RSG')
    return _Phases(' + '.join(parts), rsg, never)


def _profile(args: Dict[str, Any], counts: Optional[Sequence[int]]) -> str:
    """The dataset and its imbalance ρ, measured from the class counts where known (the flags may not apply)."""
    dataset = args.get('dataset', '?')
    if counts:
        return f'{dataset} (ρ = {max(counts) / max(min(counts), 1):.0f}, {len(counts)} classes)'
    if not _cut(args) or not args.get('imb_factor'):
        return dataset
    return f'{dataset} ({args["imb_type"]}, ρ = {round(1 / args["imb_factor"])})'


def _evaluated_split(args: Dict[str, Any]) -> str:
    """The split the summary's rows were measured on, by the name a reader finds on disk: a ``folder_lt`` ``test``
    is read from ``val/`` when there is no ``test/``, iNaturalist 2018's test set is its val list."""
    split, dataset = str(args.get('val_split', 'test')), args.get('dataset')
    if dataset == 'folder_lt':
        data_dir = args.get('data_dir')
        if data_dir and Path(data_dir).is_dir():
            try:
                return f'`{Path(folder_split_dir(data_dir, split)).name}/` folder'
            except FileNotFoundError:
                pass
        return f'`{split}` split (the first of `{split}/`, `val/`, `validation/`, `test/` in the data folder)'
    spec = LIST_LT_SPECS.get(dataset)
    if spec is not None and split == 'test' and 'test' not in spec.splits:
        split = 'val'
    return f'{"balanced " if dataset in _BALANCED_EVAL else ""}`{split}` split'


def _base_model(args: Dict[str, Any]) -> Optional[str]:
    """The Hub id of the timm weights a ``--pretrained`` run started from (the backbone's default tag or the named
    one), for the card's ``base_model``; none when the start weights were a local file (``--pretrained-path``)."""
    if not args.get('pretrained') or args.get('pretrained_path'):
        return None
    name, tag = split_model_name_tag(str(args.get('model', '')))
    arch = backbone_arch(name)
    try:
        cfg = get_pretrained_cfg(f'{arch}.{tag}' if tag else arch)
    except RuntimeError:
        return None
    return getattr(cfg, 'hf_hub_id', None) if cfg is not None else None


def _model_index(run: TrainingRun, repo_id: str, split: str) -> List[Dict[str, Any]]:
    """Hugging Face's ``model-index``: last-epoch top-1 and many/medium/few (empty groups left out)."""
    last, dataset = run.last, str(run.args.get('dataset', 'unknown'))
    if last is None:
        return []
    names = {'top1': 'Top-1 accuracy', 'many': 'Many-shot accuracy', 'medium': 'Medium-shot accuracy',
             'few': 'Few-shot accuracy'}
    metrics = [dict(type='accuracy', name=f'{title} (last epoch)', value=round(float(last[f'eval_{key}']), 2))
               for key, title in names.items() if not math.isnan(float(last.get(f'eval_{key}', math.nan)))]
    return [dict(name=repo_id.split('/')[-1], results=[dict(
        task=dict(type='image-classification', name='Image Classification'),
        dataset=dict(name=_DATASET_TITLES.get(dataset, dataset), type=_HUB_DATASETS.get(dataset, dataset),
                     split=split),
        metrics=metrics)])]


def _front_matter(run: TrainingRun, repo_id: str, phases: _Phases) -> str:
    args = run.args
    meta: Dict[str, Any] = dict(library_name='timm', license='apache-2.0',
                                tags=[*_TAGS, *(['rsg'] if phases.rsg else [])], pipeline_tag='image-classification')
    dataset = args.get('dataset')
    if dataset in _HUB_DATASETS:
        meta['datasets'] = [_HUB_DATASETS[dataset]]
    base = _base_model(args)
    if base:
        meta['base_model'] = base
    index = _model_index(run, repo_id, str(args.get('val_split', 'test')))
    if index:
        meta['model-index'] = index
    return '---\n' + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + '---\n'


def _dataset_section(counts: Optional[List[int]]) -> str:
    if not counts:
        return 'The export carries no training class counts.'
    groups = shot_split(counts)
    return '\n'.join([
        f'{len(counts)} classes, {sum(counts)} training images, {max(counts)} to {min(counts)} per class '
        f'(measured imbalance {max(counts) / max(min(counts), 1):.1f}).',
        '',
        markdown_table(['group', 'training images per class', 'classes'], [
            ('many', f'> {MANY_SHOT_ABOVE}', len(groups['many'])),
            ('medium', f'{FEW_SHOT_BELOW}..{MANY_SHOT_ABOVE}', len(groups['medium'])),
            ('few', f'< {FEW_SHOT_BELOW}', len(groups['few'])),
        ]),
    ])


def _calibration_note(run: TrainingRun, logit_scale: float) -> str:
    """On which logits the ECE was measured: LDAM's cosine logits x s (the probabilities it was trained to), or as
    they are; runs before summary.csv recorded the scale measured the raw cosine logits."""
    recorded = run.summary.get('eval_logit_scale') if run.summary is not None else None
    if recorded is not None and recorded.notna().all():
        at = float(recorded.iloc[-1])
        if at != 1:
            return (f'ECE (%, 15 bins) is that of softmax({at:g} x logits): the loss scaled the cosine logits by '
                    f'{at:g}, so these are the probabilities it fitted.')
        return 'ECE (%, 15 bins) is that of the softmax of the logits.'
    if logit_scale != 1:
        return (f'ECE (%, 15 bins) was measured on the logits as they are, not on the {logit_scale:g} x logits the '
                f'loss trained (this run predates that); `validate.py` gives it at the trained scale.')
    return 'ECE (%, 15 bins) is that of the softmax of the logits.'


def _results_section(run: TrainingRun, split: str, logit_scale: float) -> str:
    last, best = run.last, run.best
    if last is None:
        return 'The run folder has no summary.csv, so no results are reported.'
    epochs = run.args.get('epochs')
    done = int(last['epoch']) + 1
    metric = run.args.get('eval_metric', 'top1')
    split_name = split.split('`')[1] if '`' in split else split
    rows = [(f'last epoch ({done - 1})', *(last.get(f'eval_{k}', math.nan) for k in _RESULT_KEYS)),
            (f'best {metric} on {split_name} (epoch {int(best["epoch"])})',
             *(best.get(f'eval_{k}', math.nan) for k in _RESULT_KEYS))]
    text = [
        f'Accuracy (%) on the {split}; many/medium/few are the mean per-class accuracy of classes with > '
        f'{MANY_SHOT_ABOVE}, {FEW_SHOT_BELOW}..{MANY_SHOT_ABOVE} and < {FEW_SHOT_BELOW} training images. '
        + _calibration_note(run, logit_scale),
        '',
        markdown_table(['epoch', *_RESULT_KEYS], rows),
        '',
        "**The published weights are the last epoch's.** "
        f'The best-epoch row is selected on the {split_name} split itself '
        '(as the official RSG and LDAM-DRW code report), so it is optimistic; it is given only for comparison '
        'with published numbers.',
    ]
    if epochs is not None and done < int(epochs):
        text += ['', f'The run stopped after {done} of {epochs} epochs.']
    return '\n'.join(text)


def _per_class_section(per_class: Optional[pd.DataFrame]) -> str:
    if per_class is None:
        return 'The run folder has no per_class.csv.'
    columns = [c for c in ('class_id', 'label', 'train_count', 'test_count', 'accuracy', 'shot')
               if c in per_class.columns]
    table = markdown_table(columns, per_class[columns].head(_MAX_TABLE_CLASSES).itertuples(index=False))
    if len(per_class) > _MAX_TABLE_CLASSES:
        table += f'\n\nFirst {_MAX_TABLE_CLASSES} of {len(per_class)} classes; all are in `per_class.csv`.'
    return 'Last epoch, also in `per_class.csv`.\n\n' + table


def _use_section(run: TrainingRun, counts: Optional[Sequence[int]], split: str) -> str:
    """Intended use and limitations; a demo run must read as a demo."""
    args, last = run.args, run.last
    top1 = None if last is None else float(last['eval_top1'])
    if args.get('dataset') in _FIXED_PROFILE_DATASETS:
        scope = (f'**A demo, not a usable classifier.** It was trained on the small CIFAR-10-LT demo set embedded in '
                 f'rsg_timm ({sum(counts) if counts else "under 1000"} training images) for {args.get("epochs", "a few")} '
                 f'epochs' + (f' and reaches {top1:.1f}% top-1' if top1 is not None else '')
                 + ': it shows that the training and export pipeline runs end to end, not what RSG achieves.')
    else:
        scope = ('Intended for research on long-tailed classification: a baseline to compare with, or a backbone to '
                 f'fine-tune. It predicts the {len(counts) if counts else "training"} classes of '
                 f'{args.get("dataset", "its dataset")} only.')
    limits = ['Accuracy is lower on the rare classes (see many/medium/few above); check the per-class table before '
              'relying on any one class.',
              f'The best-epoch row was selected on the {split} it reports; only the last-epoch row is an unbiased '
              'estimate.']
    epochs = args.get('epochs')
    if epochs is not None and int(epochs) < 100 and args.get('dataset') not in _FIXED_PROFILE_DATASETS:
        limits.append(f'{epochs} epochs is far shorter than the papers\' 200-epoch recipes; expect lower accuracy '
                      'than published.')
    return '\n'.join([scope, '', *(f'- {line}' for line in limits)])


def _figures_section(run_dir: Path) -> Optional[str]:
    shown = [f'![{title}]({name})' for name, title in _FIGURES if (Path(run_dir) / name).is_file()]
    return '\n\n'.join(shown) if shown else None


# Epoch switches of late phases: a value past the run's last epoch is listed as never reached.
_SWITCHES = {'drw_epoch': 0, 'drs_epoch': 0, 'rsg_epoch_thresh': 1}  # first acting epoch = value + offset


def _recipe_rows(args: Dict[str, Any], config: Dict[str, Any], last_epoch: int) -> List[Tuple[str, str]]:
    """The image size first, then every flag that was set and acted on the weights (paths by their file name; a
    late-phase switch the run never reached is marked so)."""
    height, width = config.get('pretrained_cfg', {}).get('input_size', [None, '?', '?'])[1:]
    size = f'{height} x {width}' + (f' (`--img-size {args["img_size"]}`)' if args.get('img_size') else
                                    " (the model's default)")
    rows = [('image size', size)]
    for key in _RECIPE_ROWS:
        value = args.get(key)
        if value is None or value is False or value in ('', {}) or (key in _ACTS_WHEN and not _ACTS_WHEN[key](args)):
            continue
        if train_flags()[key].path:
            value = Path(str(value)).name  # a path on the training machine: its file name says enough
        shown = ' '.join(map(str, value)) if isinstance(value, (list, tuple)) else \
            ' '.join(f'{k}={v}' for k, v in value.items()) if isinstance(value, dict) else str(value)
        if key in _SWITCHES and int(value) + _SWITCHES[key] > last_epoch:
            shown += f' (never reached: the run ended at epoch {last_epoch})'
        rows.append((f'`--{key.replace("_", "-")}`', shown))
    return rows


def _repository() -> str:
    """rsg_timm and its version, linked to its repository when the installed package names one."""
    try:
        meta = importlib.metadata.metadata('rsg_timm')
    except importlib.metadata.PackageNotFoundError:
        return f'rsg_timm {__version__}'
    urls = [meta.get('Home-page')] + [u.split(',', 1)[-1].strip() for u in meta.get_all('Project-URL') or []]
    url = next((u for u in urls if u and u != 'UNKNOWN'), None)
    return f'[rsg_timm]({url}) {__version__}' if url else f'rsg_timm {__version__}'


def _usage_code(config: Dict[str, Any], repo_id: str, arch: str, needs_plugin: bool, logit_scale: float) -> List[str]:
    """timm-style inference: top-5 probabilities (at the trained logit scale) and the pooled features."""
    num_classes = int(config.get('num_classes', 5))
    cosine_export = bool(config.get(COSINE_CLASSIFIER_KEY))
    lines = [
        'import timm, torch' + (', rsg_timm  # rsg_timm registers ' + arch if needs_plugin else ''),
        'from PIL import Image',
        '',
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        'transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))',
        "label_names = model.pretrained_cfg.get('label_names')",
        "x = transform(Image.open('image.jpg').convert('RGB')).unsqueeze(0)",
        'with torch.no_grad():',
        '    features = model.forward_head(model.forward_features(x), pre_logits=True)  # pooled features '
        f'[1, {config.get("num_features", "C")}]',
    ]
    if cosine_export:
        lines += ['    # a cosine head saved as a linear one: normalise the features to get its cosine logits',
                  '    logits = model.get_classifier()(torch.nn.functional.normalize(features, dim=-1))']
    else:
        lines.append('    logits = model.get_classifier()(features)  # = model(x)')
    if logit_scale != 1:
        lines += [f'# the loss trained softmax({logit_scale:g} x logits) (config.json: "{LOGIT_SCALE_KEY}"): '
                  'these are the calibrated probabilities',
                  f'probabilities = ({logit_scale:g} * logits).softmax(dim=-1)']
    else:
        lines.append('probabilities = logits.softmax(dim=-1)')
    lines += [f'top5 = probabilities.topk({min(5, num_classes)})',
              'print([(label_names[i], round(p, 3)) for p, i in zip(top5.values[0].tolist(), '
              'top5.indices[0].tolist())])']
    return lines


def create_model_card(run: TrainingRun, config: Dict[str, Any], repo_id: str, needs_plugin: bool,
                      num_params: Optional[int] = None) -> str:
    """The ``README.md`` of a run's Hub repo.

    Args:
        run: the run folder's records.
        config: the export's ``config.json``.
        repo_id: ``ORG/NAME`` the card is published under (used in the loading examples).
        needs_plugin: the architecture is registered by rsg_timm, so loading needs ``import rsg_timm``.
        num_params: the exported model's parameter count.
    """
    args, arch = run.args, config.get('architecture', '?')
    counts = config.get(CLASS_COUNTS_KEY)
    fixed_profile = args.get('dataset') in _FIXED_PROFILE_DATASETS
    phases = _phases(run)
    split = _evaluated_split(args)
    logit_scale = float(config.get(LOGIT_SCALE_KEY) or training_logit_scale(args) or 1.0)
    figures = _figures_section(run.run_dir)
    dataset = args.get('dataset', 'DATASET')
    height, width = config.get('pretrained_cfg', {}).get('input_size', [None, '?', '?'])[1:]
    details = [f'architecture: `{arch}`' + (f', {num_params / 1e6:.2f} M parameters' if num_params else ''),
               f'image size: {height} x {width}',
               f'classes: {config.get("num_classes", "?")}',
               f'trained with {_repository()}, the timm plugin for [RSG]({_RSG_PAPER}) (Rare-class Sample Generator, '
               'CVPR 2021)']
    base = _base_model(args)
    if base:
        details.append(f'started from the timm weights [{base}](https://huggingface.co/{base})')
    sections = [
        _front_matter(run, repo_id, phases),
        f'# {repo_id}',
        '',
        f'`{arch}` trained on {_profile(args, counts)} with {phases.method}. RSG only acts during training, so '
        f'these weights are the plain `{arch}` backbone'
        + (' and load in plain timm.' if not needs_plugin else '; `import rsg_timm` registers the architecture.'),
        '',
        *(f'- {line}' for line in details),
        '',
        *([*(f'- {line}' for line in phases.never_started), ''] if phases.never_started else []),
        '## Recipe',
        '',
        markdown_table(['setting', 'value'], _recipe_rows(args, config, _last_epoch(run))),
        '',
        'Flags not listed were left unset (the model\'s, dataset\'s or recipe\'s default) or off, or did not act on '
        'this run (e.g. `--momentum` under AdamW, `--imb-factor` without an imbalance cut); every resolved flag is '
        'in `args.yaml`.',
        '',
        '## Training data',
        '',
        _dataset_section(counts),
        '',
        '## Results',
        '',
        _results_section(run, split, logit_scale),
        '',
        *(['## Figures', '', figures, ''] if figures else []),
        '## Intended use and limitations',
        '',
        _use_section(run, counts, split),
        '',
        '## Per-class accuracy',
        '',
        _per_class_section(run.per_class),
        '',
        '## Train it again',
        '',
        'The resolved arguments of this run are in `args.yaml` (machine-specific paths removed); explicit flags '
        'override it. `train.py` and `validate.py` are scripts of the rsg_timm repository, not part of its pip '
        'package, so run them from a checkout (`pip install -e .` there):',
        '',
        '```bash',
        f'hf download {repo_id} args.yaml --local-dir .',
        'python train.py --config args.yaml' + ('' if fixed_profile else ' --data-dir DATA')
        + f' --experiment {repo_id.split("/")[-1]}',
        '```',
        '',
        '## Usage',
        '',
        'Needs `pip install timm`' + (' and rsg_timm (`pip install -e .` in its checkout), which registers '
                                      f'`{arch}`.' if needs_plugin else '; rsg_timm is only needed to train.'),
        '',
        '```python',
        *_usage_code(config, repo_id, arch, needs_plugin, logit_scale),
        '',
        'import json, huggingface_hub  # training images per class, e.g. for logit adjustment',
        f"config = json.load(open(huggingface_hub.hf_hub_download('{repo_id}', 'config.json')))",
        f"class_counts = config['{CLASS_COUNTS_KEY}']",
        *([f'# logit adjustment on the trained scale: rsg_timm.posthoc.logit_adjust(logits, class_counts, tau=1.0, '
           f'scale={logit_scale:g})'] if logit_scale != 1 else []),
        '```',
        '',
        'Evaluate with many/medium/few, per-class accuracy and calibration (loss and ECE at the trained logit '
        'scale):',
        '',
        '```bash',
        f'python validate.py --model hf-hub:{repo_id} --dataset {dataset}'
        + ('' if fixed_profile else ' --data-dir DATA'),
        '```',
        '',
        '## Citation',
        '',
        '```bibtex',
        RSG_BIBTEX,
        '',
        _TIMM_BIBTEX,
        '```',
        '',
        '## Licence',
        '',
        'The weights are released under the Apache-2.0 licence; the training images keep their own terms.',
        '',
    ]
    return '\n'.join(sections)
