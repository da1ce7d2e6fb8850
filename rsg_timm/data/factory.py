"""Dataset registry: one ``create_lt_dataset(name, ...)`` for every long-tailed benchmark the package reads."""
from typing import Callable, List, Optional

from torch.utils.data import Dataset

from ..registry import Registry

from .cifar_lt import CifarLT, is_train_split
from .demo import DemoLT
from .list_lt import LIST_LT_SPECS, create_folder_lt, create_list_lt

__all__ = ['create_lt_dataset', 'cuts_to_profile', 'default_imb_type', 'list_lt_datasets']


def _cifar(num_classes: int) -> Callable[..., Dataset]:
    def build(root, split, imb_type, imb_factor, imb_select, download, transform):
        if not root:
            raise FileNotFoundError(
                f'cifar{num_classes}_lt needs --data-dir (the folder with cifar{num_classes}_train.npz or the '
                f'torchvision CIFAR folder); add --dataset-download to fetch it there.')
        return CifarLT(
            root, num_classes=num_classes, train=is_train_split(split, f'cifar{num_classes}_lt'),
            imb_type=imb_type or default_imb_type(f'cifar{num_classes}_lt'), imb_factor=imb_factor,
            imb_select=imb_select, download=download, transform=transform)
    return build


def _demo(root, split, imb_type, imb_factor, imb_select, download, transform):
    # The demo profile is fixed when the file is built; `root` may name another demo npz.
    return DemoLT(train=is_train_split(split, 'demo'), path=root, transform=transform)


def _list(name: str) -> Callable[..., Dataset]:
    def build(root, split, imb_type, imb_factor, imb_select, download, transform):
        return create_list_lt(name, root, split=split, transform=transform)
    return build


def _folder(root, split, imb_type, imb_factor, imb_select, download, transform):
    return create_folder_lt(
        root, split=split, imb_type=imb_type or default_imb_type('folder_lt'), imb_factor=imb_factor,
        imb_select=imb_select, transform=transform)


_DATASETS = Registry('dataset')
for _name, _builder in [('demo', _demo), ('cifar10_lt', _cifar(10)), ('cifar100_lt', _cifar(100)),
                        *[(name, _list(name)) for name in LIST_LT_SPECS], ('folder_lt', _folder)]:
    _DATASETS.add(_name, _builder)
del _name, _builder


def default_imb_type(name: str) -> str:
    """The class profile a dataset gets when none is asked for: CIFAR-LT is cut to the exp profile it is named
    after; every other dataset (a user's ``folder_lt`` included) is used as it is."""
    return 'exp' if name in ('cifar10_lt', 'cifar100_lt') else 'none'


def cuts_to_profile(name: str) -> bool:
    """Whether ``--imb-type`` / ``--imb-factor`` / ``--imb-select`` act on this dataset: CIFAR-LT and ``folder_lt``
    are cut to a profile; the demo and the list-file benchmarks come with theirs fixed."""
    return name in ('cifar10_lt', 'cifar100_lt', 'folder_lt')


def list_lt_datasets() -> List[str]:
    """Names accepted by ``create_lt_dataset``, sorted."""
    return _DATASETS.names()


def create_lt_dataset(
        name: str,
        root: Optional[str] = None,
        split: Optional[str] = None,
        is_training: bool = True,
        imb_type: Optional[str] = None,
        imb_factor: float = 0.01,
        imb_select: str = 'first',
        download: bool = False,
        transform: Optional[Callable] = None,
) -> Dataset:
    """Build a long-tailed dataset by name.

    Every dataset has ``targets``, ``classes`` and ``class_counts`` (training images per class, also on
    evaluation splits) and yields ``(image, label)``.

    Args:
        name: one of ``list_lt_datasets()``.
        root: the data folder (``--data-dir``); for ``demo``, optionally another demo npz.
        split: ``train``, ``val`` or ``test`` (CIFAR/demo: any non-train split is the balanced test set; the list
            datasets also take a list file path). ``None`` picks ``train`` or ``test`` from ``is_training``.
        is_training: chooses the split when ``split`` is ``None``, as in timm's ``create_dataset``.
        imb_type: ``exp``, ``step`` or ``none`` profile of the CIFAR and folder training splits; ``None`` means
            :func:`default_imb_type` (``exp`` for CIFAR, ``none``, the folder as it is, for ``folder_lt``).
        imb_factor: 1 / rho of the profile.
        imb_select: ``first`` (RSG code, the default) or ``shuffle`` (LDAM-DRW's seeded draw).
        download: let torchvision download CIFAR when it is missing.
        transform: torchvision-style transform applied to each PIL image.
    """
    builder = _DATASETS.get(name)
    if split is None:
        split = 'train' if is_training else 'test'
    return builder(root, split, imb_type, imb_factor, imb_select, download, transform)
