#!/usr/bin/env python3
"""Evaluate a classifier on a long-tailed benchmark's balanced test split, the timm way.

Besides timm's top-1/top-5 it reports many/medium/few-shot accuracy (by training images per class: > 100,
20..100, < 20), per-class accuracy, ECE and the confusion matrix. The model can be a training checkpoint
(``--model rsg_resnet32 --checkpoint output/train/RUN/last.pth.tar``; the plain backbone name works too), an exported
backbone (``--model local-dir:output/train/RUN``), a Hub id (``--model hf-hub:ORG/NAME``) or a zoo tag. The dataset
and the training profile come from what the model records (the checkpoint's arguments, the run's ``args.yaml``
beside an export, a zoo tag's entry); a model that records none needs ``--dataset``. So do the image size, crop,
interpolation, mean and std the run trained with: a checkpoint scores what its export scores. ``--logit-adjust`` and
``--tau-norm`` apply the post-hoc long-tail corrections, logit adjustment on the logits as the training loss saw them.
Loss and ECE are on that scale too (LDAM: the cosine logits x its s), where the model was fitted; the result
says which (``logit_scale``).
"""
import argparse
import json
import logging
import math
import os
from collections import OrderedDict
from functools import partial
from typing import List, Optional

import pandas as pd
import torch
from timm.data import resolve_data_config
from timm.utils import ParseKwargs, setup_default_logging

import rsg_timm  # noqa: F401  (registers the models)
from rsg_timm.cli import run_cli
from rsg_timm.checkpoint import load_training_checkpoint
from rsg_timm.eval_model import create_eval_model, read_export_config
from rsg_timm.constants import LOGIT_SCALE_KEY
from rsg_timm.data import create_lt_dataset, create_lt_loader, list_lt_datasets
from rsg_timm.engine import evaluate
from rsg_timm.losses import LDAM_DEFAULT_S
from rsg_timm.export import strip_rsg
from rsg_timm.metrics import format_metrics
from rsg_timm.plots import plot_per_class_accuracy
from rsg_timm.models.pretrained import load_pretrained_tags
from rsg_timm.posthoc import has_nonlinear_classifier, logit_adjust, tau_normalize, training_logit_scale
from rsg_timm.run_folder import read_args_yaml
from rsg_timm.train_flags import build_train_parser

_logger = logging.getLogger('validate')

# timm's data-config flags; those a run recorded (train.py's arguments) are restored unless given.
_DATA_CONFIG_FLAGS = ('img_size', 'input_size', 'crop_pct', 'mean', 'std', 'interpolation')
_SIZE_FLAGS = ('img_size', 'input_size')


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='rsg_timm long-tailed validation')
    parser.add_argument('data', nargs='?', default=None, metavar='DIR', help='dataset root, as --data-dir (timm)')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root (not needed for demo)')
    parser.add_argument('--dataset', default=None,
                        help=f'one of: {", ".join(list_lt_datasets())} (default: the one the model records; '
                             'required when it records none)')
    parser.add_argument('--split', default='test', help='evaluated split (a list file path for list datasets)')
    parser.add_argument('--dataset-download', action='store_true', help='let torchvision download CIFAR')
    parser.add_argument('--imb-type', default=None, choices=('exp', 'step', 'none'),
                        help='training profile, used for many/medium/few when the model does not carry counts '
                             '(default: the recorded one, else exp for CIFAR-LT and none, the data as it is, '
                             'otherwise)')
    parser.add_argument('--imb-factor', type=float, default=None, help='(default: the recorded one, else 0.01)')
    parser.add_argument('--imb-select', default=None, choices=('first', 'shuffle'),
                        help='(default: the recorded one, else first)')
    parser.add_argument('--model', '-m', required=True, help='arch, local-dir:DIR or hf-hub:ORG/NAME')
    parser.add_argument('--checkpoint', default='', help='training checkpoint or state_dict file')
    parser.add_argument('--pretrained', action='store_true', help='pretrained weights (implied without --checkpoint)')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    group = parser.add_argument_group('Data config (default: what the run trained with, else the model\'s)')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='input image size')
    group.add_argument('--input-size', type=int, nargs=3, default=None, metavar=('C', 'H', 'W'),
                       help='input size, overrides --img-size')
    group.add_argument('--crop-pct', type=float, default=None, help='centre-crop share of the resized image')
    group.add_argument('--mean', type=float, nargs=3, default=None, metavar='MEAN', help='normalisation mean')
    group.add_argument('--std', type=float, nargs=3, default=None, metavar='STD', help='normalisation std')
    group.add_argument('--interpolation', default=None, help='resize interpolation')
    parser.add_argument('-b', '--batch-size', type=int, default=256)
    parser.add_argument('-j', '--workers', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--log-freq', type=int, default=10, metavar='N', help='log progress every N batches (0: off)')
    parser.add_argument('--logit-adjust', type=float, default=None, metavar='TAU',
                        help='post-hoc logit adjustment: predict with S * logits - TAU * log(prior), S the scale '
                             'the training loss applied (LDAM: its s, read from the training arguments)')
    parser.add_argument('--logit-scale', type=float, default=None, metavar='S',
                        help='the factor S the training loss applied to the logits, for the loss, ECE and '
                             f'--logit-adjust (default: the recorded one; LDAM: --ldam-s, {LDAM_DEFAULT_S:g} by '
                             f'default; CE: 1)')
    parser.add_argument('--tau-norm', type=float, default=None, metavar='TAU',
                        help='post-hoc tau-normalisation of the classifier weights (bias dropped)')
    parser.add_argument('--results-file', default='', help='write the summary row here')
    parser.add_argument('--results-format', default='csv', choices=('csv', 'json'))
    parser.add_argument('--per-class-file', default='',
                        help='per-class CSV (default: next to --results-file); a PNG plot too with matplotlib')
    parser.add_argument('--confusion-file', default='', help='confusion matrix CSV (default: next to --results-file)')
    return parser


def _side_file(args: argparse.Namespace, explicit: str, suffix: str) -> str:
    if explicit or not args.results_file:
        return explicit
    return os.path.splitext(args.results_file)[0] + suffix


def _check_output_files(args: argparse.Namespace) -> None:
    """Refuse, before the evaluation, an output file whose folder is missing or which is a folder: it would fail
    only after the evaluation ran."""
    for flag, path in (('--results-file', args.results_file),
                       ('--per-class-file', _side_file(args, args.per_class_file, '_per_class.csv')),
                       ('--confusion-file', _side_file(args, args.confusion_file, '_confusion.csv'))):
        folder = os.path.dirname(path) or '.'
        if path and (not os.path.isdir(folder) or os.path.isdir(path)):
            problem = f'{path} is a folder' if os.path.isdir(path) else f'its folder {folder} does not exist'
            raise ValueError(f'{flag} {path}: {problem}; create the folder or pass another file')


def _training_record(model_name: str, checkpoint_path: str, cache_dir: Optional[str] = None) -> dict:
    """The training arguments the model records (``{}`` when none): a checkpoint's ``args``, the ``args.yaml`` of
    the run folder or Hub repo an export sits in (else the ``logit_scale`` its ``config.json`` records), or a zoo
    tag's ``train_args`` and ``class_counts``."""
    if checkpoint_path:
        saved = load_training_checkpoint(checkpoint_path).get('args')
        return dict(vars(saved) if isinstance(saved, argparse.Namespace) else saved or {})
    path = None
    if model_name.startswith('local-dir:'):
        path = os.path.join(model_name[len('local-dir:'):], 'args.yaml')
    elif model_name.startswith('hf-hub:'):
        from huggingface_hub import hf_hub_download
        repo_id, _, revision = model_name[len('hf-hub:'):].partition('@')
        try:
            path = hf_hub_download(repo_id, 'args.yaml', revision=revision or None, cache_dir=cache_dir)
        except Exception as e:  # a repo pushed without its run records, or offline without a cached copy
            _logger.info(f'{model_name}: no args.yaml ({type(e).__name__}), so no recorded training arguments')
    else:
        entry = load_pretrained_tags().get(model_name, {})
        return dict(entry.get('train_args', {}), class_counts=entry.get('class_counts'))
    if path and os.path.isfile(path):
        return read_args_yaml(path)
    scale = read_export_config(model_name, cache_dir=cache_dir).get(LOGIT_SCALE_KEY)
    return {} if scale is None else {LOGIT_SCALE_KEY: scale}


def _resolve_dataset(args: argparse.Namespace, record: dict) -> None:
    """Take the dataset and its training profile from the record unless given; refuse to guess."""
    recorded = record.get('dataset')
    if args.dataset is None:
        if recorded is None:
            raise ValueError(f'{args.model} does not record the dataset it was trained on; pass --dataset '
                             f'({", ".join(list_lt_datasets())}) and --data-dir')
        args.dataset = recorded
        _logger.info(f'--dataset {recorded} (recorded by {args.model})')
    elif recorded is not None and recorded != args.dataset:
        _logger.warning(f'{args.model} was trained on {recorded}; evaluating it on {args.dataset}')
    same = args.dataset == recorded
    train_parser = build_train_parser()
    for key in ('imb_type', 'imb_factor', 'imb_select'):  # train.py's defaults; imb_type's (None) is by dataset
        if getattr(args, key) is None:
            default = train_parser.get_default(key)
            setattr(args, key, record.get(key, default) if same else default)
    if args.data_dir is None and same and record.get('data_dir') and os.path.exists(record['data_dir']):
        args.data_dir = record['data_dir']


def _restore_data_config(args: argparse.Namespace, record: dict) -> List[str]:
    """Take the image size, crop, interpolation, mean and std the run trained with unless given (a size given in
    either form replaces the recorded one); returns the flags restored."""
    size_given = any(getattr(args, key) is not None for key in _SIZE_FLAGS)
    restored = []
    for key in _DATA_CONFIG_FLAGS:
        if getattr(args, key) is None and record.get(key) is not None and not (size_given and key in _SIZE_FLAGS):
            setattr(args, key, record[key])
            restored.append(key)
    return restored


def _describe_data_config(data_config: dict, restored: List[str], source: str) -> str:
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    described = ', '.join(f'{k} {values[k]}' for k in ('input_size', 'interpolation', 'crop_pct', 'mean', 'std')
                          if k in values)
    flags = ', '.join('--' + k.replace('_', '-') for k in restored)
    origin = f'{flags} as {source} was trained, the rest ' if restored else ''
    return f'data config: {described} ({origin}from the flags given, else the model\'s defaults)'


def _logit_scale(args: argparse.Namespace, model: torch.nn.Module, record: dict) -> float:
    """The factor the training loss applied to the logits. A cosine head with no recorded loss is refused for
    --logit-adjust, and evaluated unscaled (with a warning) otherwise."""
    if args.logit_scale is not None:
        return args.logit_scale
    scale = training_logit_scale(record)
    if scale is None:
        scale = record.get(LOGIT_SCALE_KEY)
    if scale is not None:
        return float(scale)
    if has_nonlinear_classifier(model) and args.logit_adjust is None:
        _logger.warning(f'{args.model} has a cosine classifier and records no training loss: its loss and ECE are on '
                        f'the unscaled cosine logits; pass --logit-scale S (the --ldam-s it was trained with, '
                        f'{LDAM_DEFAULT_S:g} by default) for the scale it was fitted at')
    elif has_nonlinear_classifier(model):
        raise ValueError(
            f'--logit-adjust: {args.model} has a cosine classifier (logits in [-1, 1]) and records no training loss, '
            f'so the scale its loss applied is unknown and log-priors would swamp the logits; pass --logit-scale S '
            f'(the --ldam-s it was trained with, {LDAM_DEFAULT_S:g} by default)')
    return 1.0


def main(argv=None) -> dict:
    setup_default_logging()
    args = _build_parser().parse_args(argv)
    _check_output_files(args)
    if args.data is not None:
        if args.data_dir is not None and args.data_dir != args.data:
            raise ValueError(f'two dataset roots: {args.data} and --data-dir {args.data_dir}; pass one of them')
        args.data_dir = args.data
    device = torch.device(args.device)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None

    _logger.info(f'loading {args.model}' + (f' with {args.checkpoint}' if args.checkpoint else ''))
    model, class_counts, label_names = create_eval_model(
        args.model, args.checkpoint, pretrained=args.pretrained or not args.checkpoint,
        num_classes=args.num_classes, **args.model_kwargs)
    record = _training_record(args.model, args.checkpoint, cache_dir=args.model_kwargs.get('cache_dir'))
    _resolve_dataset(args, record)
    restored = _restore_data_config(args, record)
    model = strip_rsg(model)  # evaluation runs the deployable backbone; RSG adds nothing at test time
    logit_scale = _logit_scale(args, model, record)
    if args.tau_norm is not None:
        model = tau_normalize(model, args.tau_norm)
    dataset = create_lt_dataset(args.dataset, args.data_dir, split=args.split, is_training=False,
                                imb_type=args.imb_type, imb_factor=args.imb_factor, imb_select=args.imb_select,
                                download=args.dataset_download)
    if len(dataset.classes) != model.num_classes:
        raise ValueError(f'{args.model} predicts {model.num_classes} classes but {args.dataset} has '
                         f'{len(dataset.classes)}; evaluate it on the dataset it was trained for')
    if class_counts is None:
        class_counts = record.get('class_counts')
    if class_counts is None:
        class_counts = list(dataset.class_counts)
        _logger.info(f'training class counts from the {args.dataset} profile (the model carries none)')

    data_config = resolve_data_config(vars(args), model=model)
    _logger.info(_describe_data_config(data_config, restored, args.checkpoint or args.model))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = create_lt_loader(dataset, dataset_name=args.dataset, batch_size=args.batch_size, is_training=False,
                              data_config=data_config, device=device, num_workers=args.workers,
                              channels_last=args.channels_last)
    _logger.info(f'evaluating {len(dataset)} {args.dataset} {args.split} images in {len(loader)} batches')
    # evaluate scales the logits first, so the adjustment subtracts the log-priors from the trained scale
    transform = partial(logit_adjust, class_counts=class_counts, tau=args.logit_adjust) \
        if args.logit_adjust is not None else None
    metrics, evaluator = evaluate(model, loader, device=device, num_classes=model.num_classes,
                                  class_counts=class_counts, label_names=label_names or list(dataset.classes),
                                  amp_dtype=amp_dtype, channels_last=args.channels_last, logit_scale=logit_scale,
                                  logit_transform=transform, log_interval=args.log_freq)

    results = OrderedDict(model=args.model, checkpoint=args.checkpoint)
    for key in ('top1', 'top5'):
        results[key], results[f'{key}_err'] = round(metrics[key], 3), round(100 - metrics[key], 3)
    # an empty shot group is NaN; JSON has no NaN, so it is written as null (an empty cell in the CSV)
    results.update((k, None if math.isnan(v) else round(v, 3)) for k, v in metrics.items() if k not in results)
    results.update(dataset=args.dataset, split=args.split, num_images=len(dataset), param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                   img_size=data_config['input_size'][-1], logit_adjust=args.logit_adjust, logit_scale=logit_scale,
                   tau_norm=args.tau_norm)
    _logger.info(f'{args.model} on {args.dataset} {args.split} ({len(dataset)} images): '
                 + format_metrics(metrics, ('top1', 'top5', 'many', 'medium', 'few', 'loss', 'ece'))
                 + (f' (loss, ece at logits x{logit_scale:g})' if logit_scale != 1 else ''))
    print('--result')
    print(json.dumps(results, indent=4))

    if args.results_file:
        if args.results_format == 'json':
            with open(args.results_file, 'w') as f:
                json.dump(results, f, indent=4)
        else:
            pd.DataFrame([results]).to_csv(args.results_file, index=False)
    per_class_file = _side_file(args, args.per_class_file, '_per_class.csv')
    if per_class_file:
        per_class = evaluator.per_class()
        per_class.to_csv(per_class_file, index=False)
        plot_per_class_accuracy(per_class, os.path.splitext(per_class_file)[0] + '.png')
    confusion_file = _side_file(args, args.confusion_file, '_confusion.csv')
    if confusion_file:
        evaluator.confusion().to_csv(confusion_file)
    return results


if __name__ == '__main__':
    run_cli(main)
