"""The model zoo: trained rsg_timm checkpoints as timm pretrained tags (``cifar_resnet32.<tag>``).

A tag is one entry of ``rsg_timm/pretrained/tags.json``, keyed ``<arch>.<tag>``, whose weights ship beside it as
``rsg_timm/pretrained/<arch>.<tag>.safetensors`` (the backbone export of a train.py run). The architecture's
entrypoint resolves the tag with :func:`resolve_zoo_tag`, so that::

    timm.create_model('cifar_resnet32.<tag>', pretrained=True)

loads the shipped file offline, or, when the package was installed without it, the published copy at the entry's
``hf_hub_id`` (the same files as ``hf-hub:<hf_hub_id>``). An entry holds the published head's ``num_classes``, the
data config the run used, the ``model_args`` the architecture was built with (``use_norm`` for an LDAM cosine
head: a cfg cannot carry them, so they join the entrypoint's kwargs) and ``notes`` (measured accuracy, training
command).

The table (a few kB of JSON, read once) is registered with timm at import through the architectures'
``default_cfgs`` (:func:`with_zoo_cfgs`), so ``timm.list_pretrained()`` and ``timm.list_pretrained('*lt_r100*')``
list every zoo tag. The untagged cfg stays each architecture's default: ``create_model('cifar_resnet32',
pretrained=True)`` keeps failing with timm's "No pretrained weights exist" rather than silently picking a zoo
checkpoint trained for one particular dataset and head. Ask for a zoo checkpoint by its tag. The ``rsg_*`` wrappers
take timm's tags of their backbone, not zoo tags (a zoo tag needs its ``model_args``, which only the plain
architecture's entrypoint applies).

Entries are added with ``python -m rsg_timm.hub add-pretrained RUN_DIR --tag TAG --hf-hub-id ORG/NAME``
(:func:`add_pretrained`); a process that has already read the table sees new entries after a restart.
"""
import dataclasses
import functools
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from safetensors import SafetensorError, safe_open
from timm.models import PretrainedCfg, get_pretrained_cfg, model_entrypoint

from ..atomic import atomic_write

__all__ = ['PRETRAINED_DIR', 'load_pretrained_tags', 'zoo_tag_names', 'with_zoo_cfgs', 'resolve_zoo_tag', 'add_pretrained',
           'remove_pretrained']

_logger = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / 'pretrained'
_TAGS_FILE = 'tags.json'
# Cfg fields an entry may set: everything but the weight sources and what the registry fills in.
_ENTRY_CFG_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg)) - {
    'url', 'file', 'state_dict', 'source', 'architecture', 'tag', 'custom_load'}
# Besides the cfg: create_model kwargs, the training class counts (many/medium/few, logit adjustment) and the
# training arguments that say what the logits mean and which data they were fitted to (validate.py reads both).
_ENTRY_KEYS = _ENTRY_CFG_FIELDS | {'model_args', 'class_counts', 'train_args'}
_TRAIN_ARG_KEYS = ('dataset', 'imb_type', 'imb_factor', 'imb_select', 'loss', 'ldam_s', 'reweight')
# The data config of an export's config.json that a tag carries over.
_DATA_CFG_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')
_TAG_RE = re.compile(r'^[a-z0-9][a-z0-9_]*$')

Tags = Dict[str, Dict[str, Any]]


def load_pretrained_tags(pretrained_dir: Union[str, os.PathLike] = PRETRAINED_DIR) -> Tags:
    """The zoo table (``{'<arch>.<tag>': entry}``), empty when the folder has no ``tags.json``.

    Raises:
        ValueError: an entry with an unknown key, no ``num_classes`` or a malformed name, naming the entry.
    """
    path = Path(pretrained_dir) / _TAGS_FILE
    if not path.is_file():
        return {}
    try:
        tags = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError naming no file
        raise ValueError(f'{path} is not valid JSON ({e}), so no zoo tag loads; restore it (git checkout, or '
                         f'reinstall rsg_timm)') from None
    if not isinstance(tags, dict) or not all(isinstance(entry, dict) for entry in tags.values()):
        raise ValueError(f'{path} must map <arch>.<tag> to an entry object; restore it (git checkout, or reinstall '
                         f'rsg_timm)')
    for name, entry in tags.items():
        arch, _, tag = name.partition('.')
        unknown = sorted(set(entry) - _ENTRY_KEYS)
        if not arch or not _TAG_RE.match(tag) or unknown or 'num_classes' not in entry:
            raise ValueError(
                f'{path}: entry {name!r} must be named <arch>.<tag> (tag: lower-case letters, digits, _), give '
                f'num_classes and use only {sorted(_ENTRY_KEYS)} (unknown: {unknown})')
    return tags


@functools.lru_cache(maxsize=None)
def _shipped_tags() -> Tags:
    """The package's zoo table, read once (when the architectures register)."""
    return load_pretrained_tags()


def zoo_tag_names() -> List[str]:
    """The shipped zoo's ``<arch>.<tag>`` names."""
    return list(_shipped_tags())


def _zoo_cfg(arch_cfg: Mapping[str, Any], name: str, entry: Mapping[str, Any], pretrained_dir: Path) -> Dict[str, Any]:
    """A tag's cfg: the architecture's untagged cfg updated by the entry, ``file`` set to the shipped weights (absolute)
    when they are present."""
    cfg = dict(arch_cfg, **{k: v for k, v in entry.items() if k in _ENTRY_CFG_FIELDS})
    weights = pretrained_dir.resolve() / f'{name}.safetensors'
    if weights.is_file():
        cfg['file'] = str(weights)
    return cfg


def with_zoo_cfgs(arch_cfgs: Mapping[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The ``generate_default_cfgs`` input of an architecture module: its untagged cfgs plus every shipped zoo tag of
    those architectures, the untagged cfg kept as the default.

    timm makes the first tag with weights an architecture's default unless a key ending in ``*`` claims it; the
    untagged cfgs come last as ``<arch>.*`` so that they do.
    """
    cfgs = {name: _zoo_cfg(arch_cfgs[name.partition('.')[0]], name, entry, PRETRAINED_DIR)
            for name, entry in _shipped_tags().items() if name.partition('.')[0] in arch_cfgs}
    cfgs.update((f'{arch}.*', cfg) for arch, cfg in arch_cfgs.items())
    return cfgs


def resolve_zoo_tag(
        arch: str,
        kwargs: Mapping[str, Any],
        tags: Optional[Tags] = None,
        pretrained_dir: Union[str, os.PathLike] = PRETRAINED_DIR,
) -> Dict[str, Any]:
    """An entrypoint's kwargs with a zoo tag resolved: ``pretrained_cfg='<tag>'`` becomes the tag's cfg, and the
    architecture options its weights were trained with (``model_args``) are added beneath the caller's.

    timm hands the entrypoint the tag of ``create_model('<arch>.<tag>')`` as ``pretrained_cfg``; the tag's cfg is
    built as at registration, from ``tags`` and ``pretrained_dir`` (a table other than the shipped one works too).
    Anything but a zoo tag of ``arch`` is returned unchanged, for timm to resolve.

    Args:
        arch: the architecture being built.
        kwargs: what the entrypoint received.
        tags: the zoo table; the shipped one by default.
        pretrained_dir: where the tagged weights live.
    """
    tag = kwargs.get('pretrained_cfg')
    if not isinstance(tag, str) or not tag:
        return dict(kwargs)
    name = f'{arch}.{tag}'
    entry = (_shipped_tags() if tags is None else tags).get(name)
    if entry is None:
        return dict(kwargs)
    cfg = dict(_zoo_cfg(get_pretrained_cfg(arch).to_dict(), name, entry, Path(pretrained_dir)),
               architecture=arch, tag=tag)
    if not cfg.get('file') and not cfg.get('hf_hub_id'):
        _logger.warning(f'{name}: no weights file in {pretrained_dir} and no hf_hub_id, so the tag has no weights')
    return dict(entry.get('model_args', {}), **dict(kwargs, pretrained_cfg=cfg))


def _run_notes(run_dir: Path) -> List[str]:
    """The run's last-epoch accuracy (with the best test epoch, labelled) and its training command, if it is a run."""
    if not (run_dir / 'args.yaml').is_file():
        return []
    from ..run_folder import read_run  # here, not at the top: reading a run needs pandas, model code must not
    run = read_run(run_dir)
    notes = [f'trained with: python train.py --config {run_dir / "args.yaml"}']
    last, best = run.last, run.best
    if last is not None:
        shots = ', '.join(f'{k} {last[f"eval_{k}"]:.2f}' for k in ('many', 'medium', 'few'))
        notes.insert(0, f'top-1 {last["eval_top1"]:.2f} (last epoch {int(last["epoch"])}; {shots}); best-on-test '
                        f'{best["eval_top1"]:.2f} at epoch {int(best["epoch"])}')
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
    with atomic_write(pretrained_dir / _TAGS_FILE) as f:
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
    if not _TAG_RE.match(tag):
        raise ValueError(f'tag {tag!r}: use lower-case letters, digits and _ (timm style, e.g. ldam_drw_cifar10_lt)')
    if hf_hub_id is not None and hf_hub_id.count('/') != 1:
        raise ValueError(f'--hf-hub-id {hf_hub_id!r}: pass the published repo as ORG/NAME')
    config = json.loads(config_path.read_text())
    arch = config['architecture']
    if not model_entrypoint(arch).__module__.startswith(__package__.split('.')[0]):
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
        from ..run_folder import read_run  # here, not at the top: reading a run needs pandas, model code must not
        run_args = read_run(run_dir).args
        entry['train_args'] = {k: run_args[k] for k in _TRAIN_ARG_KEYS if k in run_args}
    entry['notes'] = [*(_run_notes(run_dir) if run_notes else []), *notes]
    entry = {k: v for k, v in entry.items() if v is not None}

    pretrained_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(pretrained_dir / f'{name}.safetensors', 'wb') as dst, open(weights_path, 'rb') as src:
        shutil.copyfileobj(src, dst)
    tags[name] = entry
    _write_tags(pretrained_dir, tags)
    _logger.info(f'Added {name} to {pretrained_dir / _TAGS_FILE}')
    return name, entry


def remove_pretrained(name: str, pretrained_dir: Union[str, os.PathLike] = PRETRAINED_DIR) -> None:
    """Retire the zoo tag ``name`` (``<arch>.<tag>``): its ``tags.json`` entry and its weights file.

    Raises:
        KeyError: ``name`` is not in the zoo, naming the tags there are.
    """
    pretrained_dir = Path(pretrained_dir)
    tags = load_pretrained_tags(pretrained_dir)
    if name not in tags:
        raise KeyError(f'{name} is not in the zoo ({pretrained_dir / _TAGS_FILE}); its tags: {sorted(tags)}')
    del tags[name]
    _write_tags(pretrained_dir, tags)
    (pretrained_dir / f'{name}.safetensors').unlink(missing_ok=True)
    _logger.info(f'Removed {name} from {pretrained_dir / _TAGS_FILE}')
