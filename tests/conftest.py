"""Test-wide set-up: no network, and the Hugging Face cache flags fixed before timm imports huggingface_hub."""
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

import rsg_timm  # noqa: E402,F401  (registers the models)

SHARED_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared'))
TESTDATA_DIR = os.path.join(SHARED_DIR, 'testdata')


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


REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
TINY_COUNTS = [40, 30, 20, 12, 8, 6, 5, 4, 3, 2]


def load_script(relative_path: str):
    """Import a repository script (``train.py``, ``benchmarks/reproduce.py``) as a module, by path."""
    import importlib.util
    name = '_script_' + relative_path.replace('/', '_').replace('.py', '')
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_DIR, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_demo_npz(path, counts=TINY_COUNTS, test_per_class: int = 8, seed: int = 0) -> str:
    """A demo-format npz (``--dataset demo --data-dir PATH``): long-tailed 32x32 images whose colour depends on
    the class, so a few steps can learn something."""
    import numpy as np
    rng = np.random.default_rng(seed)
    train_y = np.repeat(np.arange(len(counts)), counts)
    test_y = np.repeat(np.arange(len(counts)), test_per_class)

    def make(y):
        return (rng.integers(0, 60, (len(y), 32, 32, 3)) + (y * 19)[:, None, None, None]).astype(np.uint8)

    np.savez_compressed(path, train_images=make(train_y), train_labels=train_y, test_images=make(test_y),
                        test_labels=test_y, classes=np.array([f'c{i}' for i in range(len(counts))]),
                        class_counts=np.array(counts))
    return str(path)


@pytest.fixture(scope='session')
def tiny_demo(tmp_path_factory):
    """130 long-tailed training images over 10 classes (``TINY_COUNTS``), 8 test images per class."""
    return write_demo_npz(tmp_path_factory.mktemp('data') / 'tiny_demo.npz')
