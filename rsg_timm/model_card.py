"""Describe a train.py run folder as a Hugging Face model card (``README.md``).

The card says what a long-tail reader needs to judge the weights: the recipe (from ``args.yaml``), the training
class profile and its many/medium/few groups, the last epoch's accuracy (the honest number) beside the best test
epoch (labelled as selected on the test split, which is what the RSG and LDAM-DRW papers report), the per-class
table, how to train it again, how to load it, the citation and the licence. Pure text: no network, no writes.
"""
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
import yaml

from .constants import CLASS_COUNTS_KEY, FEW_SHOT_MAX, MANY_SHOT_MIN
from .metrics import shot_split
from .models import is_rsg_model
from .run_folder import TrainingRun

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
# Hub datasets the long-tailed sets are drawn from (the card's ``datasets`` metadata).
_HUB_DATASETS = {'demo': 'uoft-cs/cifar10', 'cifar10_lt': 'uoft-cs/cifar10', 'cifar100_lt': 'uoft-cs/cifar100',
                 'imagenet_lt': 'ILSVRC/imagenet-1k'}
_TAGS = ('image-classification', 'timm', 'long-tail', 'rsg')
# args.yaml keys shown as the recipe, in this order (unset ones are left out).
_RECIPE_KEYS = (
    'model', 'pretrained', 'dataset', 'imb_type', 'imb_factor', 'imb_select', 'sampler', 'loss', 'focal_gamma',
    'ldam_max_m', 'ldam_s', 'la_tau', 'cosine_classifier', 'reweight', 'drw_epoch', 'cb_beta', 'epochs',
    'batch_size', 'opt', 'lr', 'momentum', 'weight_decay', 'decay_all_params', 'sched', 'decay_milestones',
    'decay_rate', 'warmup_epochs', 'warmup_lr', 'amp', 'seed',
    'rsg_stage', 'rsg_n_center', 'rsg_contrastive_dim', 'rsg_strength', 'rsg_epoch_thresh', 'rsg_head_ratio',
    'rsg_cesc_weight', 'rsg_mv_weight',
)
_RESULT_KEYS = ('top1', 'top5', 'many', 'medium', 'few', 'ece')
# Datasets with a fixed class profile: train.py's --imb-* flags do not apply, so the card must not show them.
_FIXED_PROFILE_DATASETS = ('demo',)
_PROFILE_KEYS = ('imb_type', 'imb_factor', 'imb_select')
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


def _method(args: Dict[str, Any]) -> str:
    """E.g. ``LDAM + DRW + RSG``: the loss, the re-weighting and whether RSG was trained."""
    parts = [str(args.get('loss', '?')).upper()]
    if args.get('reweight') not in (None, 'none'):
        parts.append(str(args['reweight']).upper())
    if args.get('sampler') not in (None, 'instance'):
        parts.append(f'{args["sampler"]} sampling')
    if is_rsg_model(str(args.get('model', ''))):
        parts.append('RSG')
    return ' + '.join(parts)


def _profile(args: Dict[str, Any], counts: Optional[Sequence[int]]) -> str:
    """The dataset and its imbalance ρ, measured from the class counts where known (the flags may not apply)."""
    dataset = args.get('dataset', '?')
    if counts:
        return f'{dataset} (ρ = {max(counts) / max(min(counts), 1):.0f}, {len(counts)} classes)'
    if dataset in _FIXED_PROFILE_DATASETS or args.get('imb_type', 'none') == 'none' or not args.get('imb_factor'):
        return dataset
    return f'{dataset} ({args["imb_type"]}, ρ = {round(1 / args["imb_factor"])})'


def _front_matter(args: Dict[str, Any]) -> str:
    meta: Dict[str, Any] = dict(library_name='timm', license='apache-2.0', tags=list(_TAGS),
                                pipeline_tag='image-classification')
    dataset = args.get('dataset')
    if dataset:
        meta['datasets'] = [_HUB_DATASETS.get(dataset, dataset)]
    return '---\n' + yaml.safe_dump(meta, sort_keys=False) + '---\n'


def _dataset_section(counts: Optional[List[int]]) -> str:
    if not counts:
        return 'The export carries no training class counts.'
    groups = shot_split(counts)
    return '\n'.join([
        f'{len(counts)} classes, {sum(counts)} training images, {max(counts)} to {min(counts)} per class '
        f'(measured imbalance {max(counts) / max(min(counts), 1):.1f}).',
        '',
        markdown_table(['group', 'training images per class', 'classes'], [
            ('many', f'> {MANY_SHOT_MIN}', len(groups['many'])),
            ('medium', f'{FEW_SHOT_MAX}..{MANY_SHOT_MIN}', len(groups['medium'])),
            ('few', f'< {FEW_SHOT_MAX}', len(groups['few'])),
        ]),
    ])


def _results_section(run: TrainingRun) -> str:
    last, best = run.last, run.best
    if last is None:
        return 'The run folder has no summary.csv, so no results are reported.'
    epochs = run.args.get('epochs')
    done = int(last['epoch']) + 1
    metric = run.args.get('eval_metric', 'top1')
    rows = [(f'last epoch ({done - 1})', *(last.get(f'eval_{k}', math.nan) for k in _RESULT_KEYS)),
            (f'best {metric} on test (epoch {int(best["epoch"])})',
             *(best.get(f'eval_{k}', math.nan) for k in _RESULT_KEYS))]
    text = [
        f'Accuracy (%) on the balanced `{run.args.get("val_split", "test")}` split; many/medium/few are the mean '
        f'per-class accuracy of classes with > {MANY_SHOT_MIN}, {FEW_SHOT_MAX}..{MANY_SHOT_MIN} and < '
        f'{FEW_SHOT_MAX} training images.',
        '',
        markdown_table(['epoch', *_RESULT_KEYS], rows),
        '',
        "**The published weights are the last epoch's.** "
        'The best-epoch row is selected on the test split itself '
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


def _use_section(run: TrainingRun, counts: Optional[Sequence[int]]) -> str:
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
              'The best-epoch row was selected on the test split; only the last-epoch row is an unbiased estimate.']
    epochs = args.get('epochs')
    if epochs is not None and int(epochs) < 100 and args.get('dataset') not in _FIXED_PROFILE_DATASETS:
        limits.append(f'{epochs} epochs is far shorter than the papers\' 200-epoch recipes; expect lower accuracy '
                      'than published.')
    return '\n'.join([scope, '', *(f'- {line}' for line in limits)])


def _figures_section(run_dir: Path) -> Optional[str]:
    shown = [f'![{title}]({name})' for name, title in _FIGURES if (Path(run_dir) / name).is_file()]
    return '\n\n'.join(shown) if shown else None


def create_model_card(run: TrainingRun, config: Dict[str, Any], repo_id: str, needs_plugin: bool) -> str:
    """The ``README.md`` of a run's Hub repo.

    Args:
        run: the run folder's records.
        config: the export's ``config.json``.
        repo_id: ``ORG/NAME`` the card is published under (used in the loading examples).
        needs_plugin: the architecture is registered by rsg_timm, so loading needs ``import rsg_timm``.
    """
    args, arch = run.args, config.get('architecture', '?')
    counts = config.get(CLASS_COUNTS_KEY)
    fixed_profile = args.get('dataset') in _FIXED_PROFILE_DATASETS
    recipe = [(f'`--{k.replace("_", "-")}`', ' '.join(map(str, v)) if isinstance(v, list) else str(v))
              for k in _RECIPE_KEYS for v in [args.get(k)] if v is not None and v is not False
              and not (fixed_profile and k in _PROFILE_KEYS)]
    figures = _figures_section(run.run_dir)
    import_line = 'import timm, rsg_timm  # rsg_timm registers ' + arch if needs_plugin else 'import timm'
    dataset = args.get('dataset', 'DATASET')
    sections = [
        _front_matter(args),
        f'# {repo_id}',
        '',
        f'`{arch}` trained on {_profile(args, counts)} with {_method(args)} by rsg_timm, the timm plugin for '
        f'[RSG](https://arxiv.org/abs/2106.09859) (Rare-class Sample Generator, CVPR 2021). RSG only acts during '
        f'training, so these weights are the plain `{arch}` backbone'
        + (' and load in plain timm.' if not needs_plugin else '; `import rsg_timm` registers the architecture.'),
        '',
        '## Recipe',
        '',
        markdown_table(['setting', 'value'], recipe),
        '',
        'Flags not listed kept their defaults' + (' (for RSG: the paper\'s settings).'
                                                  if is_rsg_model(str(args.get('model', ''))) else '.'),
        '',
        '## Training data',
        '',
        _dataset_section(counts),
        '',
        '## Results',
        '',
        _results_section(run),
        '',
        *(['## Figures', '', figures, ''] if figures else []),
        '## Intended use and limitations',
        '',
        _use_section(run, counts),
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
        import_line,
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        'transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))',
        "label_names = model.pretrained_cfg.get('label_names')",
        '',
        'import json, huggingface_hub  # training images per class, e.g. for logit adjustment',
        f"config = json.load(open(huggingface_hub.hf_hub_download('{repo_id}', 'config.json')))",
        f"class_counts = config['{CLASS_COUNTS_KEY}']",
        *([f'# LDAM trained on logits x {args.get("ldam_s") or 30:g}: scale them so before subtracting log-priors',
           f'# (rsg_timm.posthoc.logit_adjust(logits, class_counts, tau=1.0, scale={args.get("ldam_s") or 30:g}))']
          if args.get('loss') == 'ldam' else []),
        '```',
        '',
        'Evaluate with many/medium/few, per-class accuracy and calibration:',
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
