"""Test-wide set-up (no network, the ``slow`` marker) and the fixtures shared by several test modules."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import rsg_timm  # noqa: E402,F401  (registers the models)

from helpers import load_script, train_args, write_demo_npz  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.environ.get('RSG_TIMM_SLOW') == '1':
        return
    skip_slow = pytest.mark.skip(reason='slow test; set RSG_TIMM_SLOW=1 to run')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def tiny_folder(tmp_path_factory):
    """A long-tailed ImageFolder tree (``folder_lt``: train/ and val/) of 16x16 images whose colour depends on the
    class: 8, 6, 4, 3 and six times 2 training images, one val image per class."""
    root = tmp_path_factory.mktemp('folder_lt')
    rng = np.random.default_rng(0)
    train_counts = [8, 6, 4, 3, 2, 2, 2, 2, 2, 2]
    for split, counts in (('train', train_counts), ('val', [1] * len(train_counts))):
        for c, n in enumerate(counts):
            os.makedirs(root / split / f'class{c}')
            for i in range(n):
                image = rng.integers(0, 60, (16, 16, 3)) + 19 * c
                Image.fromarray(image.astype(np.uint8)).save(root / split / f'class{c}' / f'{i}.png')
    return str(root)


@pytest.fixture(scope='session')
def tiny_demo(tmp_path_factory):
    """130 long-tailed training images over 10 classes (``TINY_COUNTS``), 8 test images per class."""
    return write_demo_npz(tmp_path_factory.mktemp('data') / 'tiny_demo.npz')


@dataclass
class TrainedRun:
    """A finished train.py run and what its criterion saw."""
    dir: Path
    result: dict
    # per epoch, the class weight of every criterion call (None: unweighted)
    class_weights: List[List[Optional[torch.Tensor]]] = field(default_factory=list)


@pytest.fixture(scope='session')
def trained_run(tiny_demo, tmp_path_factory):
    """The one trained run the script, export and hub tests share: two epochs of rsg_resnet32 with LDAM-DRW, CESC
    in epoch 0, generation and DRW in epoch 1. Records the class weight of every criterion call."""
    train = load_script('train.py')
    run = TrainedRun(dir=tmp_path_factory.mktemp('runs') / 'run', result={})

    def create_loss(*args, **kwargs):
        criterion = train_create_loss(*args, **kwargs)
        criterion.register_forward_pre_hook(lambda module, inputs: run.class_weights[-1].append(
            None if module.weight is None else module.weight.detach().clone()))
        return criterion

    def train_one_epoch(*args, **kwargs):
        run.class_weights.append([])
        return train_train_one_epoch(*args, **kwargs)

    train_create_loss, train_train_one_epoch = train.create_loss, train.train_one_epoch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, 'create_loss', create_loss)
        patch.setattr(train, 'train_one_epoch', train_one_epoch)
        run.result = train.main(train_args(tiny_demo, run.dir.parent, run.dir.name, '--rsg-epoch-thresh', '0'))
    return run
