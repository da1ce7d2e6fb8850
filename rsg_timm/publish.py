"""Stage a finished run for publishing: its backbone export, a model card and the run's records, in one folder.

Nothing here touches the network; ``hub.py`` uploads the folder. What leaves the machine is chosen by the flags'
declared kinds (:func:`rsg_timm.train_flags.published_args`): no machine flag and no local path.
"""
import argparse
import json
import logging
import shutil
import os
from pathlib import Path
from typing import Union

import yaml
from timm.data import resolve_data_config
from timm.models import model_entrypoint

from .checkpoint import load_training_checkpoint
from .eval_model import create_eval_model
from .export import save_pretrained
from .model_card import create_model_card
from .posthoc import training_logit_scale
from .run_folder import read_run
from .train_flags import published_args

__all__ = ['export_run']

_logger = logging.getLogger(__name__)

_EXPORT_FILES = ('config.json', 'model.safetensors')
_RECORD_FILES = ('summary.csv', 'per_class.csv', 'curves.png', 'per_class.png')  # figures: [plot] extra
_PACKAGE = __package__  # 'rsg_timm'

PathLike = Union[str, os.PathLike]


def _export_backbone(run_dir: Path, out_dir: Path) -> None:
    """Copy the run's export, or write one from ``last.pth.tar`` when training stopped before exporting."""
    if all((run_dir / name).is_file() for name in _EXPORT_FILES):
        for name in _EXPORT_FILES:
            shutil.copyfile(run_dir / name, out_dir / name)
        return
    checkpoint = run_dir / 'last.pth.tar'
    if not checkpoint.is_file():
        raise FileNotFoundError(f'{str(run_dir)!r} has neither an exported backbone (config.json + model.safetensors) '
                                f'nor last.pth.tar to export one from; is it a train.py run folder?')
    saved = load_training_checkpoint(str(checkpoint))
    backbone = saved.get('backbone')
    if not backbone:
        raise FileNotFoundError(f'{str(checkpoint)!r} does not record its backbone; it was not written by train.py')
    model, class_counts, label_names = create_eval_model(backbone, str(checkpoint))
    _logger.info(f'{run_dir} has no export; exporting the backbone of {checkpoint}')
    train_args = saved.get('args')
    train_args = vars(train_args) if isinstance(train_args, argparse.Namespace) else train_args or {}
    save_pretrained(model, out_dir, class_counts=class_counts, label_names=label_names,
                    data_config=resolve_data_config({}, model=model), logit_scale=training_logit_scale(train_args))


def export_run(run_dir: PathLike, out_dir: PathLike, *, repo_id: str = 'ORG/NAME') -> Path:
    """Stage what ``push`` uploads for a run into ``out_dir``: the backbone export, README.md and the run records.

    Args:
        run_dir: a train.py run folder (``output/train/<experiment>``).
        out_dir: the staging folder, created if needed; it must not be the run folder.
        repo_id: the Hub repo the card's loading examples name.

    Returns:
        The staging folder.
    """
    run = read_run(run_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == run.run_dir.resolve():
        raise ValueError(f'stage into another folder than the run itself ({out_dir}); it would replace args.yaml')
    out_dir.mkdir(parents=True, exist_ok=True)
    _export_backbone(run.run_dir, out_dir)
    config = json.loads((out_dir / 'config.json').read_text())
    needs_plugin = model_entrypoint(config['architecture']).__module__.startswith(_PACKAGE)
    timm_logger = logging.getLogger('timm')
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # counting parameters is no load the user asked for: no "Loading ..." lines
    try:
        num_params = sum(p.numel() for p in create_eval_model(f'local-dir:{out_dir.resolve()}')[0].parameters())
    finally:
        timm_logger.setLevel(level)
    (out_dir / 'README.md').write_text(create_model_card(run, config, repo_id, needs_plugin, num_params),
                                       encoding='utf-8')
    (out_dir / 'args.yaml').write_text(yaml.safe_dump(published_args(run.args), sort_keys=False))
    for name in _RECORD_FILES:
        if (run.run_dir / name).is_file():
            shutil.copyfile(run.run_dir / name, out_dir / name)
    return out_dir
