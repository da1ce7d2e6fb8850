"""Convert a checkpoint saved by the official RSG scripts into a plain-timm export.

``python -m rsg_timm.convert OFFICIAL.pth OUT_DIR [--model ARCH]`` reads the file as the official ``cifar_train.py``
/ ImageNet-LT / Places-LT / iNaturalist scripts write it (``state_dict`` with the ``linear`` or ``fc_`` classifier,
``module.`` and ``RSG.*`` keys allowed, the optimizer ignored), loads it into ``ARCH`` (the checkpoint's ``arch`` when
it names a CIFAR ResNet or a timm model) and writes, with :func:`rsg_timm.export.save_pretrained`, the backbone as
``model.safetensors`` + ``config.json`` (class count; a cosine head as ``model_args.use_norm`` for a CIFAR ResNet,
``cosine_classifier`` for a timm ResNet) and a short ``README.md`` saying where the weights came from. The folder
then loads with ``timm.create_model('local-dir:OUT_DIR', pretrained=True)`` or
``python validate.py --model local-dir:OUT_DIR --dataset ...``.
"""
import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, resolve_data_config

from .checkpoint import load_training_checkpoint
from .eval_model import create_eval_model
from .export import save_pretrained
from .models import CheckpointError, CifarResNet, backbone_arch, find_official_head

__all__ = ['convert_official_checkpoint']

OFFICIAL_REPO = 'https://github.com/Jianf-Wang/RSG'
# The official ImageNet-LT / Places-LT / iNaturalist test transform: Resize(256), CenterCrop(224), ImageNet stats.
_OFFICIAL_IMAGENET_DATA_CONFIG = dict(
    input_size=(3, 224, 224), interpolation='bilinear', crop_pct=224 / 256, crop_mode='center',
    mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)

# Cfg fields that describe the weights a tag names (timm's own), not these: dropped from the export's cfg.
_PROVENANCE_FIELDS = ('tag', 'hf_hub_id', 'url', 'file', 'license', 'origin_url', 'paper_ids', 'paper_name', 'notes')

PathLike = Union[str, os.PathLike]


def _architecture(checkpoint: Dict[str, Any], path: str) -> str:
    """The timm arch the checkpoint's ``arch`` entry names (official CIFAR ``resnet32`` is ``cifar_resnet32``)."""
    arch = checkpoint.get('arch')
    if isinstance(arch, str):
        stem = checkpoint['state_dict'].get('conv1.weight')
        if timm.is_model(f'cifar_{arch}') and stem is not None and tuple(stem.shape[2:]) == (3, 3):
            return f'cifar_{arch}'
        if timm.is_model(arch):
            return arch
    raise ValueError(f'{path!r} does not name a known architecture (arch: {arch!r}); pass --model with the one it was '
                     f'trained with, e.g. cifar_resnet32, resnext50_32x4d (ImageNet-LT), resnet152 (Places-LT), '
                     f'resnet50 (iNaturalist 2018)')


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def _model_card(arch: str, checkpoint: Dict[str, Any], path: str, cosine: bool, num_classes: int) -> str:
    recorded = [f'{key} {float(checkpoint[key]):g}' for key in ('epoch', 'best_acc1') if key in checkpoint]
    head = 'cosine (LDAM `NormedLinear`)' if cosine else 'linear'
    return '\n'.join([
        '---', 'library_name: timm', 'tags:', '- image-classification', '- timm', '- long-tail', '- rsg', '---', '',
        f'# {arch}, converted from an official RSG checkpoint', '',
        f'Converted with `python -m rsg_timm.convert` from `{os.path.basename(path)}` (sha256 `{_sha256(path)}`), a '
        f'checkpoint saved by the official RSG code ({OFFICIAL_REPO})'
        + (f'; the file records {", ".join(recorded)}' if recorded else '') + '. '
        f'Classifier: {head}, {num_classes} classes. The conversion measured no accuracy: evaluate with '
        f'`python validate.py --model local-dir:THIS_FOLDER --dataset ...`.', '',
        'With rsg_timm installed:', '', '```python', 'import rsg_timm, timm',
        "model = timm.create_model('local-dir:THIS_FOLDER', pretrained=True)", '```', '',
    ])


def convert_official_checkpoint(checkpoint_path: str, out_dir: PathLike, model_name: Optional[str] = None) -> Path:
    """Write the plain-timm export of an official RSG checkpoint into ``out_dir``; returns the folder.

    Args:
        checkpoint_path: the file the official script saved.
        out_dir: the export folder, created if needed.
        model_name: the architecture; by default the one the checkpoint's ``arch`` names.

    Raises:
        CheckpointError: the file is not an official RSG checkpoint or does not fit the architecture.
    """
    checkpoint = load_training_checkpoint(checkpoint_path)
    head = find_official_head(checkpoint['state_dict'])
    if head is None:
        raise CheckpointError(
            f'{checkpoint_path!r} is not an official RSG checkpoint: it has no linear.* or fc_.* classifier. A '
            f'train.py checkpoint is exported by its run (or python -m rsg_timm.hub push RUN_DIR --dry-run DIR)')
    arch = backbone_arch(model_name or _architecture(checkpoint, checkpoint_path))
    model, _, _ = create_eval_model(arch, checkpoint_path)
    data_config = resolve_data_config({}, model=model) if isinstance(model, CifarResNet) \
        else dict(_OFFICIAL_IMAGENET_DATA_CONFIG)
    cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _PROVENANCE_FIELDS}
    model.pretrained_cfg = model.default_cfg = dict(cfg, origin_url=OFFICIAL_REPO)
    out_dir = save_pretrained(model, out_dir, data_config=data_config)
    (out_dir / 'README.md').write_text(
        _model_card(arch, checkpoint, checkpoint_path, head.cosine, head.num_classes), encoding='utf-8')
    return out_dir


def main(argv: Optional[List[str]] = None) -> Path:
    parser = argparse.ArgumentParser(prog='python -m rsg_timm.convert', description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='the .pth / .pth.tar file an official RSG script saved')
    parser.add_argument('out_dir', help='export folder (model.safetensors, config.json, README.md)')
    parser.add_argument('--model', default=None,
                        help="architecture it was trained with (default: the checkpoint's arch entry)")
    args = parser.parse_args(argv)
    out_dir = convert_official_checkpoint(args.checkpoint, args.out_dir, args.model)
    print(f'Wrote {out_dir}; load it with timm.create_model("local-dir:{out_dir}", pretrained=True)')
    return out_dir


if __name__ == '__main__':
    from .cli import run_cli
    run_cli(main)
