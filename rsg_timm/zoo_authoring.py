"""Authoring the model zoo: ship a run's exported backbone as a pretrained tag, or retire one.

This writes ``rsg_timm/pretrained/tags.json`` and the weights beside it; reading the table at import is
:mod:`rsg_timm.models.pretrained`'s job. Kept apart because authoring reads run folders (pandas) and
``import rsg_timm`` must not. The command line is ``python -m rsg_timm.hub add-pretrained``.
"""
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from safetensors import SafetensorError, safe_open
from timm.models import model_entrypoint

from .atomic import atomic_write
from .hub_repo_id import check_repo_id
from .metrics import SHOT_GROUPS
from .models.pretrained import PRETRAINED_DIR, TAG_PATTERN, TAGS_FILE, Tags, load_pretrained_tags
from .run_folder import read_run
from .train_flags import published_args

__all__ = ['add_pretrained', 'remove_pretrained', 'accuracy_note']

_logger = logging.getLogger(__name__)

# The data config of an export's config.json that a tag carries over.
_DATA_CFG_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')


def accuracy_note(last: Mapping[str, Any], best: Mapping[str, Any]) -> str:
    """A run's accuracy as one note of its tag: the last epoch's top-1 and shot groups (the weights a tag ships), then
    the best epoch, labelled as chosen on the test split.

    Args:
        last: the last epoch's ``summary.csv`` row (:attr:`TrainingRun.last`).
        best: the best epoch's row (:attr:`TrainingRun.best`).
    """
    shots = ', '.join(f'{k} {last[f"eval_{k}"]:.2f}' for k in SHOT_GROUPS)
    return (f'top-1 {last["eval_top1"]:.2f} (last epoch {int(last["epoch"])}; {shots}); best-on-test '
            f'{best["eval_top1"]:.2f} at epoch {int(best["epoch"])}')


def _run_notes(run_dir: Path) -> List[str]:
    """The run's accuracy (:func:`accuracy_note`) and its training command, if it is a run."""
    if not (run_dir / 'args.yaml').is_file():
        return []
    run = read_run(run_dir)
    notes = [f'trained with: python train.py --config {run_dir / "args.yaml"}']
    if run.last is not None:
        notes.insert(0, accuracy_note(run.last, run.best))
    return notes


def _check_safetensors(path: Path) -> None:
    """Fail unless ``path`` is a readable safetensors file (a renamed pickle would fail only when the tag loads)."""
    try:
        with safe_open(str(path), framework='pt') as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise ValueError(f'{path} is not a safetensors file ({e}); re-export the run (train.py writes it, or '
                         f'`python -m rsg_timm.hub push RUN_DIR --repo-id ORG/NAME --dry-run DIR`)') from None


def _write_tags(pretrained_dir: Path, tags: Tags) -> None:
    with atomic_write(pretrained_dir / TAGS_FILE) as f:
        json.dump(dict(sorted(tags.items())), f, indent=2)
        f.write('\n')


def add_pretrained(
        run_dir: Union[str, os.PathLike],
        tag: str,
        hf_hub_id: Optional[str] = None,
        *,
        notes: Sequence[str] = (),
        run_notes: bool = True,
        replace: bool = False,
        pretrained_dir: Union[str, os.PathLike] = PRETRAINED_DIR,
) -> Tuple[str, Dict[str, Any]]:
    """Ship a run's exported backbone as ``<arch>.<tag>``: copy its weights and write its ``tags.json`` entry.

    The new tag is registered the next time rsg_timm is imported.

    Args:
        run_dir: a train.py run folder or any export folder (``config.json`` + ``model.safetensors``).
        tag: the tag, timm style ``<recipe>_<dataset>`` (e.g. ``ldam_drw_rsg_cifar10_lt_r100``).
        hf_hub_id: the published copy (``ORG/NAME``, as pushed by ``python -m rsg_timm.hub push``).
        notes: extra notes.
        run_notes: start the notes with the run folder's measured accuracy and training command (off when the
            caller states them itself, e.g. for a run whose history spans two folders).
        replace: overwrite an existing entry of the same name.
        pretrained_dir: the zoo folder (the package's by default).

    Returns:
        ``('<arch>.<tag>', entry)``.
    """
    run_dir, pretrained_dir = Path(run_dir), Path(pretrained_dir)
    config_path, weights_path = run_dir / 'config.json', run_dir / 'model.safetensors'
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f'{run_dir} has no exported backbone (config.json + model.safetensors); train.py writes it when a run '
            f'ends, and `python -m rsg_timm.hub push RUN_DIR --repo-id ORG/NAME --dry-run DIR` re-exports one')
    _check_safetensors(weights_path)
    if not TAG_PATTERN.match(tag):
        raise ValueError(f'tag {tag!r}: use lower-case letters, digits and _ (timm style, e.g. ldam_drw_cifar10_lt)')
    if hf_hub_id is not None:
        check_repo_id(hf_hub_id, '--hf-hub-id')
    config = json.loads(config_path.read_text())
    arch = config['architecture']
    if not model_entrypoint(arch).__module__.startswith(__package__):
        raise ValueError(f'{arch} is a timm architecture; zoo tags are for rsg_timm\'s own (cifar_resnet*). Load '
                         f'its export with hf-hub:ORG/NAME instead')
    name = f'{arch}.{tag}'
    tags = load_pretrained_tags(pretrained_dir)
    if name in tags and not replace:
        raise ValueError(f'{name} is already in the zoo; pass --replace to overwrite it')

    data_cfg = config.get('pretrained_cfg', {})
    entry: Dict[str, Any] = dict(hf_hub_id=hf_hub_id, num_classes=config['num_classes'])
    entry.update((k, data_cfg[k]) for k in _DATA_CFG_KEYS if k in data_cfg)
    if config.get('label_names'):
        entry['label_names'] = config['label_names']
    entry['model_args'] = {k: v for k, v in config.get('model_args', {}).items() if k != 'num_classes'}
    if config.get('class_counts'):
        entry['class_counts'] = config['class_counts']
    if (run_dir / 'args.yaml').is_file():
        # the published recipe: validate.py reads the data it was fitted to and the logit scale from it
        entry['train_args'] = published_args(read_run(run_dir).args)
    entry['notes'] = [*(_run_notes(run_dir) if run_notes else []), *notes]
    entry = {k: v for k, v in entry.items() if v is not None}

    pretrained_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(pretrained_dir / f'{name}.safetensors', 'wb') as dst, open(weights_path, 'rb') as src:
        shutil.copyfileobj(src, dst)
    tags[name] = entry
    _write_tags(pretrained_dir, tags)
    _logger.info(f'Added {name} to {pretrained_dir / TAGS_FILE}')
    return name, entry


def remove_pretrained(name: str, pretrained_dir: Union[str, os.PathLike] = PRETRAINED_DIR) -> None:
    """Retire the zoo tag ``name`` (``<arch>.<tag>``): its ``tags.json`` entry and its weights file.

    Raises:
        KeyError: ``name`` is not in the zoo, naming the tags there are.
    """
    pretrained_dir = Path(pretrained_dir)
    tags = load_pretrained_tags(pretrained_dir)
    if name not in tags:
        raise KeyError(f'{name} is not in the zoo ({pretrained_dir / TAGS_FILE}); its tags: {sorted(tags)}')
    del tags[name]
    _write_tags(pretrained_dir, tags)
    (pretrained_dir / f'{name}.safetensors').unlink(missing_ok=True)
    _logger.info(f'Removed {name} from {pretrained_dir / TAGS_FILE}')
