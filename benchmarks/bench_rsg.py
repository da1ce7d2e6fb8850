#!/usr/bin/env python3
"""What RSG costs, measured side by side: training step vs the plain backbone, the module's memory vs the direct
``[B, K, C, H, W]`` formulation, how the module scales, and how much of a step the input pipeline takes.

Every figure is a ratio taken in one process. The two variants run alternately after a warm-up (A B, then B A, ...),
each reported time is a median over repetitions and each ratio is the median of the per-repetition ratios, so load
from other processes hits both sides alike. A bare time from this script is not comparable with another run's.

Peak memory is the peak of tensor bytes allocated during one call above what was live before it: on CUDA
``torch.cuda.max_memory_allocated``; elsewhere :class:`LiveTensorTracker`, a ``TorchDispatchMode`` that counts every
new storage an op returns and uncounts it when a weakref finalizer sees the storage die. The tracker sees what
tensors hold (activations, saved tensors, gradients, temporaries of decomposed ops); allocator caching and scratch
buffers inside kernels (e.g. oneDNN workspaces) are not included.

Modes (default: the training step):
    python benchmarks/bench_rsg.py --csv step.csv      # rsg_resnet32 B=128 and rsg_resnext50_32x4d B=8, both phases
    python benchmarks/bench_rsg.py --model rsg_resnet32 --batch-size 128 --sweep
    python benchmarks/bench_rsg.py --module            # RSG module at ImageNet-LT / iNaturalist shapes vs direct
    python benchmarks/bench_rsg.py --scaling           # RSG module vs batch size and class count, CIFAR shape
    python benchmarks/bench_rsg.py --loader            # TensorBatchLoader + train_one_epoch vs pre-made batches
"""
import argparse
import csv
import os
import statistics
import tempfile
import time
import weakref
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import rsg_timm  # noqa: F401  (registers the models)
from rsg_timm.cli import run_cli
from rsg_timm.data.imbalance import long_tail_counts
from rsg_timm.data.loader import TensorBatchLoader
from rsg_timm.data.transforms import CifarBatchTransform
from rsg_timm.engine import autocast_context, train_one_epoch
from rsg_timm.models import backbone_arch
from rsg_timm.rsg import RSG, num_head_classes

STEP_COLUMNS = ('model', 'phase', 'batch', 'dtype', 'memory_format', 'plain_ms', 'rsg_ms', 'ratio', 'plain_peak_mb',
                'rsg_peak_mb')
MODULE_COLUMNS = ('case', 'batch', 'channels', 'size', 'num_classes', 'rsg_ms', 'direct_ms', 'ratio', 'rsg_peak_mb',
                  'direct_peak_mb', 'peak_ratio', 'bkchw_mb', 'param_mb')
LOADER_COLUMNS = ('model', 'phase', 'batch', 'batches', 'dtype', 'memory_format', 'step_img_s', 'pipeline_img_s',
                  'ratio')

DEFAULT_BATCH = {'rsg_resnet32': 128, 'rsg_resnext50_32x4d': 8}
FALLBACK_BATCH = 8  # any other model
LOADER_MODEL = 'rsg_resnet32'  # --loader default: the in-memory pipeline serves 32 px models
DTYPES = {'fp32': None, 'bf16': torch.bfloat16}
PHASES = ('cesc', 'mv')
RSG_THRESH = 0  # epoch 0 is the CESC phase, epoch 1 the generation (MV) phase
# The official recipe's RSG hyper-parameters (K, D) and head share; the module modes use them at fixed shapes.
N_CENTER, CONTRASTIVE_DIM, HEAD_RATIO = 15, 256, 0.2
MODULE_CASES = {  # name: (B, C, H = W, N), layer3 of a ResNeXt-50 / ResNet-50 at 224 px
    'imagenet_lt': (32, 1024, 14, 1000),
    'inat2018': (32, 1024, 14, 8142),
}
SCALING_SHAPE = (32, 16)  # (C, H = W): the CIFAR ResNet-32 stage-2 maps, fast enough on a CPU
SCALING_BATCHES, SCALING_CLASSES = (32, 64, 128, 256), (10, 100, 1000, 8142)
SCALING_FIXED_BATCH, SCALING_FIXED_CLASSES = 128, 10

MB = 2 ** 20


# helpers: timing and memory, shared by every mode

def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(
        fns: Dict[str, Callable[[], None]],
        *,
        reps: int,
        warmup: int,
        device: torch.device,
) -> Dict[str, List[float]]:
    """Milliseconds per call of each function, run alternately (order reversed every round) after a warm-up.

    Returns:
        Per-round times of every function, in round order, so callers can pair them.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def paired_summary(base: Sequence[float], other: Sequence[float]) -> Tuple[float, float, float]:
    """``(median base, median other, median of other/base per round)``: the ratio pairs rounds run back to back."""
    return statistics.median(base), statistics.median(other), statistics.median(o / b for b, o in zip(base, other))


class LiveTensorTracker(TorchDispatchMode):
    """Peak bytes of the storages created while active (CPU, MPS, ...; any device without allocator stats).

    A storage is new when an op returns it and none of the op's inputs holds it (so views and in-place results of
    parameters or of the input are not counted). PyTorch keeps one Python object per live storage, so a weakref
    finalizer on it fires when the storage is freed. Backward runs inside the mode too (autograd carries it over).
    """

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: Dict[int, int] = {}

    def _release(self, key: int) -> None:
        self.live_bytes -= self._live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)  # unique while the storage lives; the finalizer drops it before the id is reused
            if key in inputs or key in self._live:
                continue
            self._live[key] = storage.nbytes()
            self.live_bytes += storage.nbytes()
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
            weakref.finalize(storage, self._release, key)
        return out


def peak_memory_mb(fn: Callable[[], None], device: torch.device) -> float:
    """Peak MiB allocated by tensors during ``fn()`` above what was live before the call."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / MB
    with LiveTensorTracker() as tracker:
        fn()
    return tracker.peak_bytes / MB


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
    """Write ``rows`` to ``path`` through a temporary file in the same folder, so a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """Rows as a fixed-width text table (floats with two decimals, three for ratios)."""
    def cell(key: str, value) -> str:
        if isinstance(value, float):
            return f'{value:.3f}' if 'ratio' in key else f'{value:.2f}'
        return str(value)

    cells = [[cell(k, row[k]) for k in columns] for row in rows]
    widths = [max([len(k)] + [len(r[i]) for r in cells]) for i, k in enumerate(columns)]
    lines = ['  '.join(k.rjust(w) for k, w in zip(columns, widths))]
    lines += ['  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return '\n'.join(lines)


def long_tail_labels(batch: int, num_classes: int, seed: int = 0) -> Tuple[torch.Tensor, List[int]]:
    """A deterministic batch whose labels follow the exp profile (imbalance 100), in shuffled order.

    Sample ``i`` takes the class at quantile ``(i + 0.5) / batch`` of the profile, so a batch of a few samples already
    holds head classes (the most frequent 20%) and tail classes, and RSG generates in the MV phase.

    Returns:
        Labels ``[batch]`` and the per-class counts of the profile.
    """
    counts = long_tail_counts(5000, num_classes, 'exp', 0.01)
    bounds = torch.tensor(counts, dtype=torch.float64).cumsum(0)
    quantiles = (torch.arange(batch, dtype=torch.float64) + 0.5) / batch * bounds[-1]
    labels = torch.searchsorted(bounds, quantiles, right=True)
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    return labels[order], counts


# the training step (default mode) and the input pipeline (--loader)

def _train_step(
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        images: torch.Tensor,
        target: torch.Tensor,
        *,
        rsg_epoch: Optional[int],
        amp_dtype: Optional[torch.dtype],
) -> None:
    """One step without the data: forward, CE (+ RSG's aux loss), backward, SGD step, zero_grad.

    ``rsg_epoch=None`` is the plain backbone; otherwise the RSG model in that epoch's phase, whose CE covers the real
    and the generated samples, as in ``engine.train_one_epoch``.
    """
    with autocast_context(images.device, amp_dtype):
        if rsg_epoch is None:
            logits, loss_target, aux_losses = model(images), target, {}
        else:
            model.set_epoch(rsg_epoch)
            out = model(images, target=target)
            logits, loss_target, aux_losses = out.logits, out.target, out.aux_losses
    loss = F.cross_entropy(logits.float(), loss_target)
    (loss + sum(aux_losses.values())).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _phase_epoch(phase: str) -> int:
    return RSG_THRESH if phase == 'cesc' else RSG_THRESH + 1


def _format_name(channels_last: bool) -> str:
    return 'channels_last' if channels_last else 'nchw'


def _build_model(name: str, device: torch.device, channels_last: bool, **kwargs) -> nn.Module:
    model = timm.create_model(name, **kwargs).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    # The recipe's optimizer; a small lr keeps the weights (and the number of generated samples) stable over reps.
    return torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=2e-4)


def _rsg_model(name: str, device: torch.device, channels_last: bool) -> nn.Module:
    """The RSG model (default class count) generating after epoch ``RSG_THRESH``, head classes from the profile."""
    if backbone_arch(name) == timm.models.get_arch_name(name):
        raise ValueError(f'{name} has no RSG; pass an rsg_* model (e.g. {", ".join(DEFAULT_BATCH)})')
    model = _build_model(name, device, channels_last, rsg_epoch_thresh=RSG_THRESH)
    model.set_class_counts(long_tail_labels(1, model.num_classes)[1])
    return model


def _check_generates(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> None:
    model.set_epoch(RSG_THRESH + 1)
    with torch.no_grad():
        generated = model(images, target=target).target.numel() - target.numel()
    if generated <= 0:
        raise RuntimeError(f'the MV phase generated no samples for labels {target.tolist()}; use a larger batch')


def bench_step(
        model_name: str,
        *,
        batch: Optional[int] = None,
        phases: Sequence[str] = PHASES,
        dtype: str = 'fp32',
        channels_last: bool = False,
        reps: int = 10,
        warmup: int = 2,
        device: torch.device = torch.device('cpu'),
) -> List[dict]:
    """RSG model vs its plain backbone, one row per phase: step times, their ratio and the step's peak memory."""
    batch = batch or DEFAULT_BATCH.get(model_name, FALLBACK_BATCH)
    torch.manual_seed(0)
    rsg_model = _rsg_model(model_name, device, channels_last)
    num_classes, input_size = rsg_model.num_classes, rsg_model.pretrained_cfg['input_size']
    plain = _build_model(backbone_arch(model_name), device, channels_last, num_classes=num_classes)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = torch.randn(batch, *input_size, device=device).contiguous(memory_format=memory_format)
    target = long_tail_labels(batch, num_classes)[0].to(device)
    _check_generates(rsg_model, images, target)
    amp_dtype = DTYPES[dtype]
    plain_step = partial(_train_step, plain, _sgd(plain), images, target, rsg_epoch=None, amp_dtype=amp_dtype)
    rsg_opt = _sgd(rsg_model)
    rows = []
    for phase in phases:
        epoch = _phase_epoch(phase)
        rsg_step = partial(_train_step, rsg_model, rsg_opt, images, target, rsg_epoch=epoch, amp_dtype=amp_dtype)
        times = time_interleaved({'plain': plain_step, 'rsg': rsg_step}, reps=reps, warmup=warmup, device=device)
        plain_ms, rsg_ms, ratio = paired_summary(times['plain'], times['rsg'])
        rows.append(dict(
            model=model_name, phase=phase, batch=batch, dtype=dtype,
            memory_format=_format_name(channels_last), plain_ms=plain_ms, rsg_ms=rsg_ms, ratio=ratio,
            plain_peak_mb=peak_memory_mb(plain_step, device), rsg_peak_mb=peak_memory_mb(rsg_step, device)))
    return rows


def bench_loader(
        model_name: str,
        *,
        batch: Optional[int] = None,
        num_batches: int = 4,
        phases: Sequence[str] = PHASES,
        dtype: str = 'fp32',
        channels_last: bool = False,
        reps: int = 5,
        warmup: int = 1,
        device: torch.device = torch.device('cpu'),
) -> List[dict]:
    """train.py's path (``TensorBatchLoader`` + ``CifarBatchTransform`` + ``train_one_epoch``) vs bare model steps
    on the same, pre-made batches; one model and optimizer serve both, so only the pipeline differs."""
    batch = batch or DEFAULT_BATCH.get(model_name, FALLBACK_BATCH)
    torch.manual_seed(0)
    model = _rsg_model(model_name, device, channels_last)
    size = tuple(model.pretrained_cfg['input_size'][1:])
    if size != (32, 32):
        raise ValueError(f'--loader measures the in-memory CIFAR pipeline (32 px); {model_name} takes {size}')
    labels, _ = long_tail_labels(batch * num_batches, model.num_classes)  # already shuffled: sequential order is fine
    images = torch.randint(0, 256, (len(labels), 32, 32, 3), dtype=torch.uint8)
    loader = TensorBatchLoader(images, labels, batch, augment=CifarBatchTransform(), device=device, drop_last=True,
                               channels_last=channels_last)
    premade = list(loader)
    optimizer, amp_dtype = _sgd(model), DTYPES[dtype]
    criterion = nn.CrossEntropyLoss()
    rows = []
    for phase in phases:
        epoch = _phase_epoch(phase)

        def steps() -> None:
            for x, y in premade:
                _train_step(model, optimizer, x, y, rsg_epoch=epoch, amp_dtype=amp_dtype)

        def pipeline() -> None:
            train_one_epoch(model, loader, criterion, optimizer, epoch=epoch, device=device, amp_dtype=amp_dtype,
                            channels_last=channels_last, log_interval=0)

        times = time_interleaved({'steps': steps, 'pipeline': pipeline}, reps=reps, warmup=warmup, device=device)
        steps_ms, pipeline_ms, slowdown = paired_summary(times['steps'], times['pipeline'])
        seen = batch * num_batches
        rows.append(dict(
            model=model_name, phase=phase, batch=batch, batches=num_batches, dtype=dtype,
            memory_format=_format_name(channels_last), step_img_s=1e3 * seen / steps_ms,
            pipeline_img_s=1e3 * seen / pipeline_ms, ratio=1.0 / slowdown))
    return rows


# the RSG module alone (--module, --scaling)

class DirectRSG(RSG):
    """RSG with the CESC distance computed as the official code does, through ``[B, K, C, H, W]`` tensors.

    Only the centre distance differs from :class:`RSG` (same losses, parameters and outputs), so comparing the two
    isolates what the algebraic expansion saves.
    """

    def _cesc_center_loss(self, g: torch.Tensor, pooled: torch.Tensor, gamma: torch.Tensor,
                          target: torch.Tensor) -> torch.Tensor:
        centers = self.centers[target].float()[..., None, None]  # [B, K, C, 1, 1]
        diff = g.float().unsqueeze(1) - centers  # [B, K, C, H, W]
        dist = diff.pow(2).sum(dim=(2, 3, 4))  # [B, K]
        return (gamma.float() * dist).sum() / g.shape[0]


def _module_step(rsg: RSG, maps: torch.Tensor, target: torch.Tensor, epoch: int) -> None:
    """Forward and backward of the module alone, with a gradient reaching the input maps as in a model."""
    out = rsg(feature_maps=maps, target=target, epoch=epoch)
    (out.loss_cesc + out.loss_mv + out.feature_maps.float().mean()).backward()
    rsg.zero_grad(set_to_none=True)
    maps.grad = None


def bench_module(
        case: str,
        batch: int,
        channels: int,
        size: int,
        num_classes: int,
        *,
        reps: int = 5,
        warmup: int = 1,
        device: torch.device = torch.device('cpu'),
) -> dict:
    """The RSG module against :class:`DirectRSG` in the generation phase: time and peak memory of forward+backward.

    Peak memory is what one call adds to the input maps and the parameters (the parameter gradients included).
    """
    torch.manual_seed(0)
    target = long_tail_labels(batch, num_classes)[0].to(device)
    kwargs = dict(n_center=N_CENTER, feature_maps_shape=[channels, size, size], num_classes=num_classes,
                  contrastive_module_dim=CONTRASTIVE_DIM, epoch_thresh=RSG_THRESH, device=device,
                  head_class_lists=range(num_head_classes(HEAD_RATIO, num_classes)))
    rsg = RSG(**kwargs)
    direct = DirectRSG(**kwargs)
    direct.load_state_dict(rsg.state_dict())
    maps = torch.randn(batch, channels, size, size, device=device, requires_grad=True)
    fns = {'rsg': partial(_module_step, rsg, maps, target, RSG_THRESH + 1),
           'direct': partial(_module_step, direct, maps, target, RSG_THRESH + 1)}
    times = time_interleaved(fns, reps=reps, warmup=warmup, device=device)
    direct_ms, rsg_ms, ratio = paired_summary(times['direct'], times['rsg'])
    rsg_peak, direct_peak = (peak_memory_mb(fns[k], device) for k in ('rsg', 'direct'))
    return dict(
        case=case, batch=batch, channels=channels, size=size, num_classes=num_classes, rsg_ms=rsg_ms,
        direct_ms=direct_ms, ratio=ratio, rsg_peak_mb=rsg_peak, direct_peak_mb=direct_peak,
        peak_ratio=rsg_peak / direct_peak, bkchw_mb=4 * batch * N_CENTER * channels * size * size / MB,
        param_mb=4 * sum(p.numel() for p in rsg.parameters()) / MB)


def scaling_cases() -> List[Tuple[str, int, int, int, int]]:
    """``(case, B, C, H, N)`` of the scaling table: batch sweep at N=10, then class sweep at B=128."""
    channels, size = SCALING_SHAPE
    cases = [('batch', b, channels, size, SCALING_FIXED_CLASSES) for b in SCALING_BATCHES]
    return cases + [('classes', SCALING_FIXED_BATCH, channels, size, n) for n in SCALING_CLASSES]


# command line

def _parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--module', action='store_true', help='RSG module vs the direct formulation, large shapes')
    mode.add_argument('--scaling', action='store_true', help='RSG module vs batch size and class count')
    mode.add_argument('--loader', action='store_true', help='train.py input pipeline vs pre-made batches')
    parser.add_argument('--model', default=None,
                        help=f'an rsg_* model (default: {", ".join(DEFAULT_BATCH)}; {LOADER_MODEL} with --loader)')
    parser.add_argument('-b', '--batch-size', type=int, default=None,
                        help=f'default: {DEFAULT_BATCH}, else {FALLBACK_BATCH}')
    parser.add_argument('--phase', nargs='+', choices=PHASES, default=list(PHASES))
    parser.add_argument('--dtype', nargs='+', choices=tuple(DTYPES), default=['fp32'],
                        help='bf16 = torch.autocast(bfloat16)')
    parser.add_argument('--channels-last', action='store_true', help='channels_last model and input')
    parser.add_argument('--sweep', action='store_true', help='every dtype and both memory formats')
    parser.add_argument('--loader-batches', type=int, default=4, help='batches per pass in --loader')
    parser.add_argument('--reps', type=int, default=10, help='timed repetitions of each variant')
    parser.add_argument('--warmup', type=int, default=2, help='untimed calls of each variant first')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=None, help='intra-op CPU threads (default: torch\'s)')
    parser.add_argument('--csv', default=None, metavar='PATH', help='also write the rows here (atomically)')
    args = parser.parse_args(argv)
    if args.reps < 1 or args.warmup < 0:
        parser.error('--reps must be >= 1 and --warmup >= 0')
    return args


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    args = _parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cpu':
        torch.set_flush_denormal(True)  # as train.py does: denormals made some CPU steps 2-5x slower at random
    timing = dict(reps=args.reps, warmup=args.warmup, device=device)
    if args.module or args.scaling:
        cases = scaling_cases() if args.scaling else [(k, *v) for k, v in MODULE_CASES.items()]
        rows, columns = [bench_module(*case, **timing) for case in cases], MODULE_COLUMNS
        print(f'RSG module, generation phase, K={N_CENTER}, D={CONTRASTIVE_DIM}: forward+backward vs DirectRSG '
              f'([B, K, C, H, W] CESC); ratio = rsg_ms / direct_ms, peak = extra MiB over input and parameters')
    else:
        models = [args.model] if args.model else [LOADER_MODEL] if args.loader else list(DEFAULT_BATCH)
        dtypes = list(DTYPES) if args.sweep else args.dtype
        formats = [False, True] if args.sweep else [args.channels_last]
        bench = partial(bench_loader, num_batches=args.loader_batches) if args.loader else bench_step
        rows = [row for name in models for dtype in dtypes for cl in formats
                for row in bench(name, batch=args.batch_size, phases=args.phase, dtype=dtype, channels_last=cl,
                                 **timing)]
        columns = LOADER_COLUMNS if args.loader else STEP_COLUMNS
        print('train.py pipeline vs pre-made batches; ratio = pipeline / step throughput' if args.loader else
              'RSG model vs plain backbone, one training step; ratio = rsg_ms / plain_ms (median of paired reps)')
    print(f'device {device}, {args.reps} reps after {args.warmup} warm-up, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads')
    print(format_table(rows, columns))
    if args.csv:
        write_csv(args.csv, rows, columns)
    return rows


if __name__ == '__main__':
    run_cli(main)
