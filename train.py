#!/usr/bin/env python3
"""Train a long-tailed classifier, with or without RSG, the timm way.

``python train.py`` trains ``rsg_resnet32`` on the embedded CIFAR-10-LT demo set through both RSG phases with the
paper's CIFAR recipe (LDAM + DRW + RSG) scaled to 30 epochs. Flags follow timm's ``train.py`` where timm has the
concept; YAML from ``--config`` sets defaults, explicit flags win, and the resolved arguments land in ``args.yaml``.
Pass a plain backbone (``--model cifar_resnet32``) to train the same network without RSG.
"""
import argparse
import contextlib
import datetime
import functools
import json
import logging
import math
import os
import shutil
import sys
import time

import torch
import yaml
from timm.data import resolve_data_config
from timm.utils import distribute_bn, init_distributed_device, is_primary, random_seed, setup_default_logging

import rsg_timm  # noqa: F401  (registers the models)
from rsg_timm.atomic import atomic_write
from rsg_timm.cli import run_cli, set_interrupt_hint
from rsg_timm.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, CheckpointError, RunCheckpointSaver, RunState, \
    load_training_checkpoint
from rsg_timm.data import ShardSampler, create_lt_dataset, create_lt_loader, create_sampler, cuts_to_profile, \
    default_imb_type, sampler_kwargs
from rsg_timm.data_parallel import EmulatedDataParallel
from rsg_timm.engine import check_divergence, evaluate, format_loss_terms, train_one_epoch
from rsg_timm.export import save_pretrained
from rsg_timm.losses import create_loss, create_reweight, loss_kwargs
from rsg_timm.metrics import format_metrics
from rsg_timm.models import is_rsg_model
from rsg_timm.plots import plot_per_class_accuracy, plot_training_curves
from rsg_timm.posthoc import training_logit_scale
from rsg_timm.recipes import EPOCH_SWITCHES, create_lr_scheduler, create_recipe_model, create_recipe_optimizer, \
    rescale_schedule, resolve_recipe
from rsg_timm.resume import ResumedRun, fork_run
from rsg_timm.run_folder import append_summary, create_run_dir, lock_run_dir, new_run_dir, truncate_summary
from rsg_timm.train_flags import build_config_parser, build_train_parser, restored_on_resume, train_flags

_logger = logging.getLogger('train')

config_parser = build_config_parser()


def _command_line_names(remaining) -> set:
    """Argument names given on the command line (without ``--config``)."""
    return set(vars(build_train_parser(suppress_defaults=True).parse_known_args(remaining)[0]))


def _scale_config_switches(args: argparse.Namespace, cfg: dict, given: set, path: str) -> None:
    """A config writes its epoch switches for its own ``epochs``; a run of another length (``--epochs``) gets them at
    the same shares, as the defaults scale, except those given on the command line."""
    if 'epochs' not in cfg or args.epochs == cfg['epochs']:
        return
    switches = {k: cfg[k] for k in EPOCH_SWITCHES if k in cfg and k not in given}
    for name, value in rescale_schedule(switches, cfg['epochs'], args.epochs).items():
        setattr(args, name, value)
    if switches:
        _logger.info(f'{path} is written for {cfg["epochs"]} epochs; its switches at the same shares of '
                     f'{args.epochs}: ' + ', '.join(f'--{k.replace("_", "-")} {getattr(args, k)}' for k in switches))


def _read_config(path: str) -> dict:
    """The flags of a ``--config`` YAML file (such as a run's ``args.yaml``), or an error naming the file."""
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f'--config {path}: cannot read it as YAML ({reason}); fix the file or pass the flags '
                         f'on the command line') from None
    if not isinstance(cfg, dict):
        raise ValueError(f'--config {path}: holds a {type(cfg).__name__}, not a mapping of argument names to values '
                         f'(e.g. "batch_size: 64")')
    return cfg


def _parse_args(argv=None) -> argparse.Namespace:
    args_config, remaining = config_parser.parse_known_args(argv)
    parser = build_train_parser()
    cfg = {}
    if args_config.config:
        cfg = _read_config(args_config.config)
        unknown = sorted(set(cfg) - set(train_flags()))
        if unknown:
            parser.error(f'{args_config.config}: unknown keys {unknown} (keys are argument names, e.g. batch_size)')
        parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    args.config = args_config.config
    if cfg:
        _scale_config_switches(args, cfg, _command_line_names(remaining), args_config.config)
    return args


def _given_names(argv=None) -> set:
    """Argument names set on the command line or by ``--config``: what a resumed run's stored flags must not undo."""
    args_config, remaining = config_parser.parse_known_args(argv)
    given = _command_line_names(remaining)
    if args_config.config:
        given |= set(_read_config(args_config.config))
    return given


def _write_args_yaml(path: str, args: argparse.Namespace) -> None:
    """Record the resolved flags (not the distributed bookkeeping), so the file works as a ``--config``; replaced in
    one step, and only when they changed, so no kill leaves a run without its recipe."""
    text = yaml.safe_dump({k: v for k, v in vars(args).items() if k in train_flags()}, sort_keys=False)
    if os.path.isfile(path):
        with open(path) as f:
            if f.read() == text:
                return
    with atomic_write(path) as f:
        f.write(text)


def _drop_checkpoint_list(record: logging.LogRecord) -> bool:
    """timm's saver logs its whole checkpoint list at every save; train.py logs it once, at the end."""
    return not record.getMessage().startswith('Current checkpoints')


def _warn_unused_profile(args: argparse.Namespace) -> None:
    """Say when class-profile flags shape nothing, since args.yaml records them as if they had."""
    if cuts_to_profile(args.dataset) and args.imb_type != 'none':
        return
    parser = build_train_parser()
    unused = [f'--{name.replace("_", "-")} {getattr(args, name)}' for name in ('imb_factor', 'imb_select')
              if getattr(args, name) != parser.get_default(name)]
    if args.imb_type != 'none':  # a dataset with a fixed profile
        unused.insert(0, f'--imb-type {args.imb_type}')
    if unused:
        how = 'as it is (--imb-type none)' if cuts_to_profile(args.dataset) else 'with its fixed class profile'
        _logger.warning(f'{", ".join(unused)}: no effect, --dataset {args.dataset} is used {how}')


def _describe_run(args: argparse.Namespace, model: torch.nn.Module, device: torch.device, amp_dtype) -> str:
    """One block that says what is in force: the resolved recipe, then the device and numerics."""
    loss = args.loss + (f' (s {training_logit_scale(vars(args)):g}, margin {args.ldam_max_m or 0.5:g})'
                        if args.loss == 'ldam' else '')
    reweight = args.reweight + (f' from epoch {args.drw_epoch}' if args.reweight == 'drw' else '')
    sched = args.sched + (f' x{args.decay_rate:g} from epochs {args.decay_milestones}' if args.sched == 'multistep'
                          else '')
    lines = [
        f'model      {args.model}, {"cosine" if args.cosine_classifier else "linear"} classifier, '
        f'{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters',
        f'loss       {loss}; re-weighting {reweight}; sampler {args.sampler}',
        f'optimizer  {args.opt} lr {args.lr:g}, momentum {args.momentum:g}, weight decay {args.weight_decay:g}'
        f'{" (all parameters)" if args.decay_all_params else ""}',
        f'schedule   {args.epochs} epochs, {sched}; warm-up {args.warmup_epochs} epochs from {args.warmup_lr:g}',
        f'device     {device} x {args.world_size}, {torch.get_num_threads()} threads, '
        f'{"AMP " + str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32"}, '
        f'channels-last {"on" if args.channels_last else "off"}'
        f'{f", nn.DataParallel semantics over {args.dp_replicas} shares" if args.dp_replicas != 1 else ""}'
        f'{", torch.compile " + args.torchcompile if args.torchcompile else ""}',
    ]
    if is_rsg_model(model):
        lines.append(f'RSG        after stage {model.rsg_stage}, head classes {model.rsg_head_classes}; CESC only '
                     f'through epoch {model.rsg.epoch_thresh}, generation after it')
    return 'run configuration:\n  ' + '\n  '.join(lines)


def _divergence_hint(args: argparse.Namespace) -> str:
    """The likely cause of a diverged or non-finite loss, the setting that explains it before the learning rate."""
    if args.batch_size < 2 * args.dp_replicas:
        return (f'Likely cause: -b {args.batch_size} puts one image in a batch (per --dp-replicas share), where '
                f'BatchNorm and RSG\'s centre and contrast estimates degenerate; use -b {2 * args.dp_replicas} or '
                f'more.')
    if args.amp and args.amp_dtype == 'float16' and str(args.device).startswith('cpu'):
        return ('Likely cause: --amp-dtype float16 on the CPU, whose autocast overflows where a GPU\'s would not; '
                'use --amp-dtype bfloat16 (the default) on the CPU.')
    if args.loss == 'ldam' and not args.cosine_classifier:
        return (f'Likely cause: --loss ldam multiplies the logits by s = {training_logit_scale(vars(args)):g}, which '
                f'suits a cosine classifier, but {args.model} has a linear head. Use --loss ce (the default for linear '
                f'heads), --cosine-classifier, or a much smaller --ldam-s.')
    return f'Likely cause: a learning rate too high for this model; lower --lr ({args.lr:g}), warm up longer or ' \
           f'add --clip-grad.'


def _resume_hint(run_dir: str) -> str:
    """How to continue a run stopped by Ctrl-C: from its last saved epoch, if it saved one."""
    last = os.path.join(run_dir, LAST_CHECKPOINT)
    if not os.path.isfile(last):
        return f'no epoch of {run_dir} was saved yet; start the run again'
    epoch = load_training_checkpoint(last)['epoch']
    return f'epoch {epoch} is saved; continue with: python train.py --resume {run_dir}'


def _last_good_checkpoint(args: argparse.Namespace, output_dir: str, epoch: int, start_epoch: int) -> str:
    """Where a diverged run can continue from: nothing of the diverged epoch is saved."""
    if epoch > start_epoch:
        path = os.path.join(output_dir, LAST_CHECKPOINT)
    else:
        path = args.resume or args.fork
    if not path:
        return ('Nothing was saved: the run diverged in its first epoch; start it again (the same --experiment '
                'reuses its folder).')
    return (f'Nothing of epoch {epoch} was saved; the last good checkpoint is {path} (epoch {epoch - 1}): continue '
            f'with --{"fork" if path == args.fork else "resume"} {path} and the changed flag.')


def _format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def main(argv=None) -> dict:
    with contextlib.ExitStack() as cleanup:  # the run folder's lock, held until the run ends however it ends
        return _train(argv, cleanup)


def _train(argv, cleanup: contextlib.ExitStack) -> dict:
    setup_default_logging()
    logging.getLogger('timm.utils.checkpoint_saver').addFilter(_drop_checkpoint_list)
    args = _parse_args(argv)
    if args.resume and args.fork:
        raise ValueError('--resume continues a run in its own folder, --fork starts a new one: pass one of them')
    if args.checkpoint_hist < 1:
        raise ValueError(f'--checkpoint-hist {args.checkpoint_hist}: it is how many of the best epochs\' checkpoints '
                         f'to keep, at least 1 (model_best.pth.tar and last.pth.tar are always kept)')
    resumed = ResumedRun.open(args, _given_names(argv), restored_on_resume()) if args.resume else None
    if args.imb_type is None:
        args.imb_type = default_imb_type(args.dataset)
    _warn_unused_profile(args)
    resolve_recipe(args)
    output_dir = new_run_dir(args)
    device = init_distributed_device(args)
    if args.resume and is_primary(args):  # before any work: another process may be writing this folder
        cleanup.enter_context(lock_run_dir(output_dir))
    if device.type == 'cpu':
        # Once trained, RSG's generation phase produces denormal floats; without flushing them a CPU step took
        # ~4.5x longer (CIFAR-10-LT, rsg_resnet32). Values below 1e-38 becoming zero changes nothing measurable.
        torch.set_flush_denormal(True)
    random_seed(args.seed, args.rank)
    amp_dtype = getattr(torch, args.amp_dtype) if args.amp else None

    # data: class counts of the training set drive the loss, the sampler, RSG's head classes and the metrics
    lt_kwargs = dict(imb_type=args.imb_type, imb_factor=args.imb_factor, imb_select=args.imb_select,
                     download=args.dataset_download)
    train_set = create_lt_dataset(args.dataset, args.data_dir, split=args.train_split, is_training=True, **lt_kwargs)
    eval_set = create_lt_dataset(args.dataset, args.data_dir, split=args.val_split, is_training=False, **lt_kwargs)
    if args.check_data:
        for dataset in (train_set, eval_set):
            if hasattr(dataset, 'check_images'):  # in-memory arrays were checked when they were read
                dataset.check_images()
    class_counts, label_names = list(train_set.class_counts), list(train_set.classes)
    if args.num_classes is not None and args.num_classes != len(class_counts):
        raise ValueError(f'--num-classes {args.num_classes} but {args.dataset} has {len(class_counts)} classes')

    model = create_recipe_model(args, len(class_counts), class_counts, start_weights=not args.resume)
    data_config = resolve_data_config(vars(args), model=model)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    loader_kwargs = dict(dataset_name=args.dataset, data_config=data_config, device=device,
                         num_workers=args.workers, channels_last=args.channels_last, seed=args.seed, rank=args.rank)
    train_loader = create_lt_loader(train_set, batch_size=args.batch_size, is_training=True,
                                    sampler=create_sampler(args.sampler, train_set, **sampler_kwargs(args)),
                                    **loader_kwargs)
    eval_loader = create_lt_loader(eval_set, batch_size=args.validation_batch_size or args.batch_size,
                                   is_training=False, sampler=ShardSampler(len(eval_set), args.world_size, args.rank),
                                   **loader_kwargs)

    optimizer = create_recipe_optimizer(args, model)
    loss_scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    lr_scheduler, num_epochs = create_lr_scheduler(args, optimizer, updates_per_epoch=len(train_loader))
    criterion = create_loss(args.loss, class_counts=class_counts, **loss_kwargs(args)).to(device)
    # eval loss and ECE on the logits the criterion saw (LDAM: cosine logits x s), where the model is calibrated
    logit_scale = training_logit_scale(vars(args))
    scale_label = f' (loss, ece at logits x{logit_scale:g})' if logit_scale != 1 else ''
    reweight = create_reweight(args.reweight, class_counts, beta=args.cb_beta, drw_epoch=args.drw_epoch)

    start_epoch = 0
    if resumed is not None:
        start_epoch = resumed.restore_state(args, model, optimizer, loss_scaler, class_counts, num_epochs, output_dir)
    elif args.fork:
        start_epoch = fork_run(args.fork, model, optimizer, class_counts)
    if start_epoch:
        lr_scheduler.step(start_epoch)
    train_model = model
    if args.dp_replicas != 1:
        train_model = EmulatedDataParallel(model, args.dp_replicas)
    if args.distributed:  # RSG trains different parameters in each phase, so some are unused in a step
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device] if device.type == 'cuda' else None,
            find_unused_parameters=is_rsg_model(model))

    run = RunState(model, class_counts, label_names)
    saver = None
    if is_primary(args):
        output_dir = create_run_dir(output_dir, args)
        if not args.resume:
            cleanup.enter_context(lock_run_dir(output_dir))
        saver = RunCheckpointSaver(model, optimizer, args=args, amp_scaler=loss_scaler, checkpoint_dir=output_dir,
                                   recovery_dir=output_dir, decreasing=args.eval_metric == 'loss',
                                   max_history=args.checkpoint_hist, task=run)
        if resumed is not None:
            saver.restore(resumed.checkpoint, resumed.path)
        # rows of epochs not checkpointed: after a kill, a resume from an earlier epoch, or a restart of a run that
        # died before its first checkpoint
        truncate_summary(os.path.join(output_dir, 'summary.csv'), start_epoch)
        _write_args_yaml(os.path.join(output_dir, 'args.yaml'), args)
        _logger.info(f'{args.model} on {args.dataset}: {len(train_set)} training images, class counts '
                     f'{class_counts}; writing to {output_dir}')
        _logger.info(_describe_run(args, model, device, amp_dtype))
        set_interrupt_hint(lambda: _resume_hint(output_dir))  # Ctrl-C (run_cli) says how to continue
    resumed = None  # the resumed state is in place; free its tensors

    progress = is_primary(args) and not args.no_progress and sys.stderr.isatty()
    evaluate_on = functools.partial(
        evaluate, model, device=device, num_classes=len(class_counts), class_counts=class_counts,
        label_names=label_names, amp_dtype=amp_dtype, channels_last=args.channels_last, logit_scale=logit_scale,
        progress=progress)
    eval_metrics, evaluator = {}, None
    run_start = time.perf_counter()
    for epoch in range(start_epoch, num_epochs):
        train_metrics = train_one_epoch(
            train_model, train_loader, criterion, optimizer, epoch=epoch, device=device, amp_dtype=amp_dtype,
            loss_scaler=loss_scaler, lr_scheduler=lr_scheduler, reweight=reweight, clip_grad=args.clip_grad,
            clip_mode=args.clip_mode, channels_last=args.channels_last, log_interval=args.log_interval,
            log_seconds=args.log_seconds, num_epochs=num_epochs, progress=progress,
            non_finite_hint=_divergence_hint(args))
        if args.distributed:
            distribute_bn(model, args.world_size, reduce=True)
        eval_metrics, evaluator = evaluate_on(eval_loader, distributed=args.distributed)
        lr_scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
        if saver is not None:
            # CE (the classifier's loss) first: the total is dominated by the auxiliary terms of RSG
            elapsed = time.perf_counter() - run_start
            eta = elapsed / (epoch + 1 - start_epoch) * (num_epochs - epoch - 1)
            phase = ''
            if is_rsg_model(model):
                phase = ' [RSG generation]' if model.rsg.generates(epoch) else ' [RSG CESC]'
            _logger.info(f'epoch {epoch} ({epoch + 1}/{num_epochs}, {_format_duration(elapsed)} elapsed, ETA '
                         f'{_format_duration(eta)}): {format_loss_terms(train_metrics)}'
                         + (f' +{train_metrics["generated"]:.1f} generated/batch' if is_rsg_model(model) else '')
                         + f' lr {train_metrics["lr"]:.3g} '
                         f'{train_metrics["images_per_sec"]:.0f} img/s | eval '
                         + format_metrics(eval_metrics, ('loss', 'top1', 'many', 'medium', 'few', 'ece'))
                         + scale_label + phase)
        # before anything of this epoch is saved, so last.pth.tar and model_best.pth.tar keep healthy weights
        check_divergence(epoch, train_metrics['ce'], eval_metrics['loss'],
                         _divergence_hint(args) + ' ' + _last_good_checkpoint(args, output_dir, epoch, start_epoch))
        if saver is not None:
            append_summary(os.path.join(output_dir, 'summary.csv'), epoch, train_metrics, eval_metrics,
                           lr=train_metrics['lr'])
            saver.save_checkpoint(epoch, metric=eval_metrics[args.eval_metric])

    if evaluator is None:  # a resumed run that had trained its last epoch: a kill or full disk stopped its export
        _logger.info(f'{args.resume} holds the final epoch ({start_epoch - 1}); redoing the final evaluation and '
                     f'export')
        eval_metrics, evaluator = evaluate_on(eval_loader, distributed=args.distributed)
    if saver is None:
        return eval_metrics
    selected = 'last epoch'
    if args.select_on == 'val':  # the best epoch on the val split, tested on the test split (the official protocol)
        model.load_state_dict(load_training_checkpoint(os.path.join(output_dir, BEST_CHECKPOINT))['state_dict'])
        test_set = create_lt_dataset(args.dataset, args.data_dir, split=args.test_split, is_training=False,
                                     **lt_kwargs)
        test_loader = create_lt_loader(test_set, batch_size=args.validation_batch_size or args.batch_size,
                                       is_training=False, **loader_kwargs)
        eval_metrics, evaluator = evaluate_on(test_loader)
        selected = f'epoch {saver.best_epoch}, best {args.eval_metric} on {args.val_split}, tested on {args.test_split}'
    # the deployable result: the last (or best-val) epoch's backbone; an epoch selected on the test split would flatter
    try:
        save_pretrained(model, output_dir, class_counts=class_counts, label_names=label_names,
                        data_config=data_config, logit_scale=logit_scale)
        plot_per_class_accuracy(evaluator.per_class(), os.path.join(output_dir, 'per_class.png'))
        plot_training_curves(os.path.join(output_dir, 'summary.csv'), os.path.join(output_dir, 'curves.png'))
        with atomic_write(os.path.join(output_dir, 'per_class.csv'), newline='') as f:  # last: it marks the end
            evaluator.per_class().to_csv(f, index=False)
    except OSError as e:  # each file is replaced whole, so what is there is complete; the training is kept
        free_mb = shutil.disk_usage(output_dir).free / 2 ** 20
        raise CheckpointError(f'could not write the export into {output_dir} ({e.strerror or e}; {free_mb:.0f} MB '
                              f'free): the training is saved; free space, then --resume {output_dir} completes the '
                              f'export') from None
    result = dict(eval_metrics, selected=selected, best_metric=saver.best_metric, best_epoch=saver.best_epoch,
                  output_dir=output_dir)
    _logger.info(f'final ({selected}): ' + format_metrics(eval_metrics, ('top1', 'top5', 'many', 'medium', 'few',
                                                                         'ece')) + scale_label
                 + f' | best {args.eval_metric} {saver.best_metric:.2f} at epoch {saver.best_epoch}')
    _logger.info('checkpoints (by ' + args.eval_metric + '): '
                 + ', '.join(f'{os.path.basename(path)} {metric:.2f}' for path, metric in saver.checkpoint_files))
    print('--result')  # strict JSON: an empty shot group is null, not NaN
    print(json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in result.items()}, indent=2))
    return result


if __name__ == '__main__':
    try:
        run_cli(main)
    finally:  # a process group left to the interpreter's exit aborted a torchrun rank once in 11 runs under load
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
