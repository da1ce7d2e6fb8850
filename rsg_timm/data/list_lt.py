"""Image-file long-tailed datasets: the ImageNet-LT / Places-LT / iNaturalist 2018 list files, and ``folder_lt``.

The list files are the Decoupling / OLTR ones (Kang et al., ICLR 2020; Liu et al., CVPR 2019), one ``relative/path label``
per line, paths relative to the image root given as ``--data-dir``; every peer trains on them verbatim. Every image
file is checked to exist and be non-empty when the dataset is built; images are opened with PIL only when an item is
read (an unreadable one is an error naming the file), or all up front with :meth:`FileLTDataset.check_images`.
``folder_lt`` takes an ImageFolder tree (``root/train/<class>/...``, ``root/val/<class>/...``) and uses it as it is,
or cuts its training split to an exp/step profile like CIFAR-LT.
"""
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, has_file_allowed_extension

from .cifar_lt import is_train_split
from .imbalance import long_tail_counts, select_long_tail

__all__ = ['FileLTDataset', 'LIST_LT_SPECS', 'ListLTSpec', 'read_list_file', 'create_list_lt', 'create_folder_lt',
           'folder_split_dir']

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListLTSpec:
    """What identifies one list-file benchmark: display name, list-file prefix, class count and its splits."""
    title: str
    prefix: str
    num_classes: int
    splits: Tuple[str, ...]

    def list_name(self, split: str) -> str:
        return f'{self.prefix}_{split}.txt'


LIST_LT_SPECS = {
    'imagenet_lt': ListLTSpec('ImageNet-LT', 'ImageNet_LT', 1000, ('train', 'val', 'test')),
    'places_lt': ListLTSpec('Places-LT', 'Places_LT', 365, ('train', 'val', 'test')),
    # iNaturalist 2018 has no separate test list: its official val split is the benchmark's test set.
    'inat2018': ListLTSpec('iNaturalist 2018', 'iNaturalist18', 8142, ('train', 'val')),
}


def read_list_file(path: str, num_classes: int) -> List[Tuple[str, int]]:
    """Parse a ``relative/path label`` list file; a malformed line or label is an error naming ``file:line``."""
    samples = []
    with open(path, 'r', encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            try:
                if len(parts) != 2:
                    raise ValueError
                label = int(parts[1])
            except ValueError:
                raise ValueError(
                    f'{path}:{lineno}: expected "relative/path label" (an integer label), got {line!r}.') from None
            if not 0 <= label < num_classes:
                raise ValueError(
                    f'{path}:{lineno}: label {label} is out of range [0, {num_classes}); '
                    f'is this the list file of the dataset you named?')
            samples.append((parts[0], label))
    if not samples:
        raise ValueError(f'{path}: the list file has no samples.')
    return samples


class FileLTDataset(Dataset):
    """Images on disk given as (path, label) pairs, loaded with PIL on access.

    Args:
        samples: (absolute image path, label) pairs.
        classes: label names.
        class_counts: training images per class; ``None`` defers to ``counts_source``.
        counts_source: called once, on first access of ``class_counts``, when they come from another split's files
            (so validating on a machine without the train list works until the counts are actually needed).
        transform: optional torchvision-style transform.
    """

    def __init__(
            self,
            samples: Sequence[Tuple[str, int]],
            classes: Sequence[str],
            class_counts: Optional[Sequence[int]] = None,
            counts_source: Optional[Callable[[], List[int]]] = None,
            transform: Optional[Callable] = None,
    ):
        if class_counts is None and counts_source is None:
            raise ValueError('Give class_counts or counts_source.')
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.classes = [str(c) for c in classes]
        self._class_counts = None if class_counts is None else [int(n) for n in class_counts]
        self._counts_source = counts_source
        self.transform = transform

    @property
    def class_counts(self) -> List[int]:
        if self._class_counts is None:
            self._class_counts = self._counts_source()
        return self._class_counts

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def check_images(self) -> None:
        """Open and decode every image now (slow: a full read of the data), so that a truncated or corrupt file
        fails before training rather than mid-epoch."""
        bad = []
        for path, _ in self.samples:
            try:
                with Image.open(path) as img:
                    img.load()
            except (OSError, SyntaxError, ValueError) as e:
                bad.append(f'{path} ({e})')
        if bad:
            raise ValueError(f'{len(bad)} of {len(self.samples)} images cannot be read: {"; ".join(bad[:5])}'
                             f'{" ..." if len(bad) > 5 else ""}. Replace them, or remove them before a run starts '
                             f'(a run resumes only on the data it started with).')
        _logger.info('All %d images read.', len(self.samples))

    def __getitem__(self, index: int) -> Tuple[object, int]:
        path, label = self.samples[index]
        try:
            img = default_loader(path)
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for missing, truncated or foreign files
            raise ValueError(f'{path}: cannot read the image ({e}); replace it with a readable copy, then --resume '
                             f'(removing it changes the class counts, and a run resumes only on its own data; '
                             f'train.py --check-data reads every image up front)') from None
        if self.transform is not None:
            img = self.transform(img)
        return img, label


def _require_dir(root: Optional[str], what: str) -> str:
    if not root:
        raise FileNotFoundError(f'{what} needs its image folder: pass --data-dir (root=...).')
    if not os.path.isdir(root):
        raise FileNotFoundError(f'{what} image folder {root!r} does not exist; pass the right --data-dir.')
    return root


def _find_list(root: str, spec: ListLTSpec, split: str) -> str:
    """Resolve a split name or an explicit list path to an existing list file."""
    if split.endswith('.txt'):
        candidates = [split, os.path.join(root, split)]
        fix = 'check the list file path given as the split'
    else:
        if split not in spec.splits:
            raise ValueError(f'Unknown split {split!r} for {spec.title}; use one of {list(spec.splits)} '
                             f'or the path of a list file.')
        name = spec.list_name(split)
        # The list files sit in the image root, or in a <prefix>/ sub-folder as in the Decoupling repo.
        candidates = [os.path.join(root, name), os.path.join(root, spec.prefix, name)]
        fix = f'put the Decoupling/OLTR list {name} into --data-dir, or pass a list file path as the split'
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f'{spec.title} list file not found (looked for {candidates}); {fix}.')


def _check_files_exist(samples: Sequence[Tuple[str, int]], source: str) -> None:
    """Every image file exists and is not empty (one ``stat`` each), so a bad one fails now, not mid-epoch."""
    missing, empty = [], []
    for path, _ in samples:
        try:
            if os.stat(path).st_size == 0:
                empty.append(path)
        except FileNotFoundError:
            missing.append(path)
    if missing or empty:
        first = [f'{what} {paths[0]!r}' for what, paths in (('missing', missing), ('empty', empty)) if paths]
        raise FileNotFoundError(f'{source}: {len(missing)} image files are missing and {len(empty)} are empty (first '
                                f'{", ".join(first)}); check --data-dir (the image root) or fix the files.')


def _count_labels(samples: Sequence[Tuple[str, int]], num_classes: int) -> List[int]:
    return np.bincount([label for _, label in samples], minlength=num_classes).tolist()


def create_list_lt(
        name: str,
        root: Optional[str],
        split: str = 'train',
        transform: Optional[Callable] = None,
) -> FileLTDataset:
    """ImageNet-LT / Places-LT / iNaturalist 2018 from its list file; ``split`` is a split name or a list path.

    Class counts come from the split itself when it is a train list (``train`` or a path ending in ``_train.txt``),
    otherwise from the standard train list found under ``root``, read on first use.
    """
    if name not in LIST_LT_SPECS:
        raise ValueError(f'Unknown list dataset {name!r}; choose one of {sorted(LIST_LT_SPECS)}.')
    spec = LIST_LT_SPECS[name]
    root = _require_dir(root, spec.title)
    if split == 'test' and 'test' not in spec.splits:
        _logger.info('%s has no test list; using its val list, the benchmark test set.', spec.title)
        split = 'val'
    list_path = _find_list(root, spec, split)
    samples = read_list_file(list_path, spec.num_classes)
    classes = [str(i) for i in range(spec.num_classes)]
    full = [(os.path.join(root, rel), label) for rel, label in samples]
    _check_files_exist(full, list_path)
    if split == 'train' or os.path.basename(split).endswith('_train.txt'):
        return FileLTDataset(
            full, classes, class_counts=_count_labels(samples, spec.num_classes), transform=transform)

    def counts_source() -> List[int]:
        return _count_labels(read_list_file(_find_list(root, spec, 'train'), spec.num_classes), spec.num_classes)

    return FileLTDataset(full, classes, counts_source=counts_source, transform=transform)


def folder_split_dir(root: str, split: str) -> str:
    """The folder of ``split`` under a ``folder_lt`` root: the split's own name first, then its synonyms (an
    evaluation split ``test`` is read from ``val/`` when there is no ``test/``)."""
    if is_train_split(split, 'folder_lt'):
        names = ['train', 'training']
    else:
        names = list(dict.fromkeys([split, 'val', 'validation', 'test']))  # the asked split first, then synonyms
    for name in names:
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(f'folder_lt: none of {[os.path.join(root, n) for n in names]} exists; pass the '
                            f'--data-dir that holds train/<class>/... and val/<class>/...')


def _folder_samples(split_dir: str, class_to_idx: Dict[str, int]) -> List[Tuple[str, int]]:
    """``(path, class)`` of every image under ``split_dir/<class>/``, in ImageFolder's order, following symbolic links
    but refusing a folder or image reached twice: a link such as ``class0/loop -> ..`` would silently train the other
    classes' images as class 0, and a link to its own folder multiplies its images."""
    seen_dirs, seen_files = {os.path.realpath(split_dir): split_dir}, {}

    def scan(folder: str, groups: List[Tuple[str, List[str]]]) -> None:
        real = os.path.realpath(folder)
        if real in seen_dirs:
            raise ValueError(f'{folder} leads to {seen_dirs[real]} again (a symbolic link loop, or two links to one '
                             f'folder): its images would be read twice or under another class; remove the link')
        seen_dirs[real] = folder
        with os.scandir(folder) as entries:
            entries = sorted(entries, key=lambda e: e.name)
        images = []
        for entry in entries:
            if entry.is_dir():
                scan(entry.path, groups)
            elif entry.is_file() and has_file_allowed_extension(entry.name, IMG_EXTENSIONS):
                real_file = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
                if real_file in seen_files:
                    raise ValueError(f'{entry.path} and {seen_files[real_file]} are one image file (a symbolic link): '
                                     f'it would be trained twice or under two classes; remove one of them')
                seen_files[real_file] = entry.path
                images.append(entry.path)
        groups.append((folder, images))

    samples = []
    for name, label in sorted(class_to_idx.items()):
        if os.path.isdir(os.path.join(split_dir, name)):
            groups = []
            scan(os.path.join(split_dir, name), groups)
            samples += [(path, label) for _, images in sorted(groups) for path in images]
    return samples


def create_folder_lt(
        root: Optional[str],
        split: str = 'train',
        imb_type: str = 'none',
        imb_factor: float = 0.01,
        imb_select: str = 'first',
        transform: Optional[Callable] = None,
) -> FileLTDataset:
    """ImageFolder tree as a long-tailed dataset; the train split is cut to the profile unless ``imb_type='none'``.

    Classes are ordered by name (ImageFolder's rule), class 0 is the profile's head, and n_max is the largest
    class. Evaluation splits reuse the train folder's class index, so a class missing there cannot shift labels.
    """
    root = _require_dir(root, 'folder_lt')
    train_dir = folder_split_dir(root, 'train')
    classes, class_to_idx = find_classes(train_dir)

    def train_samples() -> List[Tuple[str, int]]:
        samples = _folder_samples(train_dir, class_to_idx)
        if imb_type == 'none':
            return samples
        targets = [t for _, t in samples]
        n_max = int(np.bincount(targets, minlength=len(classes)).max())
        keep = select_long_tail(targets, long_tail_counts(n_max, len(classes), imb_type, imb_factor), imb_select)
        return [samples[i] for i in keep]

    def train_counts() -> List[int]:
        return _count_labels(train_samples(), len(classes))

    if is_train_split(split, 'folder_lt'):
        samples = train_samples()
        _check_files_exist(samples, train_dir)
        counts = _count_labels(samples, len(classes))
        empty = [os.path.join(train_dir, classes[i]) for i, n in enumerate(counts) if n == 0]
        if empty:  # the loss, the samplers and RSG divide by a class's count
            raise ValueError(f'{len(empty)} class folders hold no training images (first: {empty[0]}); every class '
                             f'needs some: add images, or remove the folder from every split')
        return FileLTDataset(samples, classes, class_counts=counts, transform=transform)
    split_dir = folder_split_dir(root, split)
    if os.path.basename(split_dir) != split:  # say which folder stands for the split, e.g. val/ for test
        _logger.info('folder_lt split %r: reading %s (there is no %s/ folder)', split, split_dir, split)
    samples = _folder_samples(split_dir, class_to_idx)
    _check_files_exist(samples, split_dir)
    missing = [name for i, name in enumerate(classes) if i not in {label for _, label in samples}]
    if missing:
        _logger.warning(f'{split_dir}: no images of {len(missing)} classes ({", ".join(missing[:5])}'
                        f'{", ..." if len(missing) > 5 else ""}); their accuracy is not measured')
    return FileLTDataset(samples, classes, counts_source=train_counts, transform=transform)
