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
(:func:`rsg_timm.zoo_authoring.add_pretrained`); a process that has already read the table sees new entries after a
restart.
"""
import dataclasses
import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from timm.models import PretrainedCfg, get_pretrained_cfg

__all__ = ['PRETRAINED_DIR', 'TAGS_FILE', 'TAG_PATTERN', 'Tags', 'load_pretrained_tags', 'zoo_tag_names',
           'with_zoo_cfgs', 'resolve_zoo_tag']

_logger = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / 'pretrained'
TAGS_FILE = 'tags.json'
# Cfg fields an entry may set: everything but the weight sources and what the registry fills in.
_ENTRY_CFG_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg)) - {
    'url', 'file', 'state_dict', 'source', 'architecture', 'tag', 'custom_load'}
# Besides the cfg: create_model kwargs, the training class counts (many/medium/few, logit adjustment) and the
# training arguments that say what the logits mean and which data they were fitted to (validate.py reads both).
_ENTRY_KEYS = _ENTRY_CFG_FIELDS | {'model_args', 'class_counts', 'train_args'}
# A tag: timm style, lower-case letters, digits and _ (the part after the '.' of <arch>.<tag>).
TAG_PATTERN = re.compile(r'^[a-z0-9][a-z0-9_]*$')

Tags = Dict[str, Dict[str, Any]]


def load_pretrained_tags(pretrained_dir: Union[str, os.PathLike] = PRETRAINED_DIR) -> Tags:
    """The zoo table (``{'<arch>.<tag>': entry}``), empty when the folder has no ``tags.json``.

    Raises:
        ValueError: an entry with an unknown key, no ``num_classes`` or a malformed name, naming the entry.
    """
    path = Path(pretrained_dir) / TAGS_FILE
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
        if not arch or not TAG_PATTERN.match(tag) or unknown or 'num_classes' not in entry:
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
