#!/usr/bin/env python3
"""Evaluate a classifier on a long-tailed benchmark's balanced test split, the timm way.

Besides timm's top-1/top-5 it reports many/medium/few-shot accuracy (by training images per class: > 100,
20..100, < 20), per-class accuracy, ECE and the confusion matrix. The model can be a training checkpoint
(``--model rsg_resnet32 --checkpoint output/train/RUN/last.pth.tar``; the plain backbone name works too), an exported
backbone (``--model local-dir:output/train/RUN``) or a Hub id (``--model hf-hub:ORG/NAME``). ``--logit-adjust`` and
``--tau-norm`` apply the post-hoc long-tail corrections.
"""
import argparse
import json
import logging
import os
from collections import OrderedDict
from functools import partial

import pandas as pd
import torch
from timm.data import resolve_data_config
from timm.utils import ParseKwargs, setup_default_logging

import rsg_timm  # noqa: F401  (registers the models)
from rsg_timm.cli import run_cli
from rsg_timm.checkpoint import create_eval_model
from rsg_timm.data import create_lt_dataset, create_lt_loader, list_lt_datasets
from rsg_timm.engine import evaluate
from rsg_timm.export import strip_rsg
from rsg_timm.metrics import format_metrics, plot_per_class_accuracy
from rsg_timm.posthoc import logit_adjust, tau_normalize

_logger = logging.getLogger('validate')


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='rsg_timm long-tailed validation')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root (not needed for demo)')
    parser.add_argument('--dataset', default='demo', help=f'one of: {", ".join(list_lt_datasets())}')
    parser.add_argument('--split', default='test', help='evaluated split (a list file path for list datasets)')
    parser.add_argument('--dataset-download', action='store_true', help='let torchvision download CIFAR')
    parser.add_argument('--imb-type', default=None, choices=('exp', 'step', 'none'),
                        help='training profile, used for many/medium/few when the model does not carry counts '
                             '(default: exp for CIFAR-LT, none, the data as it is, otherwise)')
    parser.add_argument('--imb-factor', type=float, default=0.01)
    parser.add_argument('--imb-select', default='first', choices=('first', 'shuffle'))
    parser.add_argument('--model', '-m', required=True, help='arch, local-dir:DIR or hf-hub:ORG/NAME')
    parser.add_argument('--checkpoint', default='', help='training checkpoint or state_dict file')
    parser.add_argument('--pretrained', action='store_true', help='pretrained weights (implied without --checkpoint)')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    parser.add_argument('-b', '--batch-size', type=int, default=256)
    parser.add_argument('-j', '--workers', type=int, default=2)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default='bfloat16', choices=('bfloat16', 'float16'))
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--logit-adjust', type=float, default=None, metavar='TAU',
                        help='post-hoc logit adjustment: predict with logits - TAU * log(prior)')
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


def main(argv=None) -> dict:
    setup_default_logging()
    args = _build_parser().parse_args(argv)
    device = torch.device(args.device)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None

    model, class_counts, label_names = create_eval_model(
        args.model, args.checkpoint, pretrained=args.pretrained or not args.checkpoint,
        num_classes=args.num_classes, **args.model_kwargs)
    model = strip_rsg(model)  # evaluation runs the deployable backbone; RSG adds nothing at test time
    if args.tau_norm is not None:
        model = tau_normalize(model, args.tau_norm)
    dataset = create_lt_dataset(args.dataset, args.data_dir, split=args.split, is_training=False,
                                imb_type=args.imb_type, imb_factor=args.imb_factor, imb_select=args.imb_select,
                                download=args.dataset_download)
    if len(dataset.classes) != model.num_classes:
        raise SystemExit(f'{args.model} predicts {model.num_classes} classes but {args.dataset} has '
                         f'{len(dataset.classes)}; evaluate it on the dataset it was trained for')
    if class_counts is None:
        class_counts = list(dataset.class_counts)
        _logger.info(f'training class counts from the {args.dataset} profile (the model carries none)')
    if args.logit_adjust is not None and class_counts is None:
        raise SystemExit('--logit-adjust needs training class counts')

    data_config = resolve_data_config(vars(args), model=model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = create_lt_loader(dataset, dataset_name=args.dataset, batch_size=args.batch_size, is_training=False,
                              data_config=data_config, device=device, num_workers=args.workers,
                              channels_last=args.channels_last)
    transform = partial(logit_adjust, class_counts=class_counts, tau=args.logit_adjust) \
        if args.logit_adjust is not None else None
    metrics, evaluator = evaluate(model, loader, device=device, num_classes=model.num_classes,
                                  class_counts=class_counts, label_names=label_names or list(dataset.classes),
                                  amp_dtype=amp_dtype, channels_last=args.channels_last, logit_transform=transform)

    results = OrderedDict(model=args.model, checkpoint=args.checkpoint)
    for key in ('top1', 'top5'):
        results[key], results[f'{key}_err'] = round(metrics[key], 3), round(100 - metrics[key], 3)
    results.update((k, round(v, 3)) for k, v in metrics.items() if k not in results)
    results.update(param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                   img_size=data_config['input_size'][-1], logit_adjust=args.logit_adjust, tau_norm=args.tau_norm)
    _logger.info(format_metrics(metrics, ('top1', 'top5', 'many', 'medium', 'few', 'ece')))
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
