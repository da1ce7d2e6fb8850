"""Shared test helpers: repository paths, the tiny long-tailed demo set and train.py arguments.

Fixtures built from these live in ``conftest.py``; test modules import the plain helpers from here.
"""
import functools
import importlib.util
import os
from types import ModuleType
from typing import List

import numpy as np

REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
# Golden vectors of the official RSG implementation, kept in the repository so a bare clone checks them.
TESTDATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
TINY_COUNTS = [40, 30, 20, 12, 8, 6, 5, 4, 3, 2]


def package_sources() -> List[str]:
    """The Python files that make up rsg_timm as shipped: the package and the two scripts, repository-relative."""
    package = [os.path.relpath(os.path.join(root, name), REPO_DIR)
               for root, _, names in os.walk(os.path.join(REPO_DIR, 'rsg_timm')) for name in names
               if name.endswith('.py')]
    return sorted(package) + ['train.py', 'validate.py']


@functools.lru_cache(maxsize=None)
def load_script(relative_path: str) -> ModuleType:
    """Import a repository script (``train.py``, ``benchmarks/reproduce.py``) as a module, by path, once."""
    name = '_script_' + relative_path.replace('/', '_').replace('.py', '')
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_DIR, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_demo_npz(path, counts=TINY_COUNTS, test_per_class: int = 8, seed: int = 0) -> str:
    """A demo-format npz (``--dataset demo --data-dir PATH``): long-tailed 32x32 images whose colour depends on
    the class, so a few steps can learn something."""
    rng = np.random.default_rng(seed)
    train_y = np.repeat(np.arange(len(counts)), counts)
    test_y = np.repeat(np.arange(len(counts)), test_per_class)

    def make(y):
        return (rng.integers(0, 60, (len(y), 32, 32, 3)) + (y * 19)[:, None, None, None]).astype(np.uint8)

    np.savez_compressed(path, train_images=make(train_y), train_labels=train_y, test_images=make(test_y),
                        test_labels=test_y, classes=np.array([f'c{i}' for i in range(len(counts))]),
                        class_counts=np.array(counts))
    return str(path)


def train_args(data: str, out, experiment: str, *extra: str) -> list:
    """train.py flags for a quick run on ``data``: batch 32, two epochs, no warm-up, no progress output."""
    return ['--data-dir', data, '--output', str(out), '--experiment', experiment, '-b', '32', '--epochs', '2',
            '--no-progress', '--log-interval', '0', '--warmup-epochs', '0', *extra]


def run_in_plain_timm(checks: str, cwd) -> None:
    """Run ``checks`` (Python that may use ``sys``, ``timm`` and ``torch``) in a fresh interpreter and assert it passed
    without importing rsg_timm: what a user without the package sees."""
    import subprocess
    import sys
    import textwrap
    script = 'import sys, timm, torch\n' + textwrap.dedent(checks) + textwrap.dedent('''
        assert 'rsg_timm' not in sys.modules, 'rsg_timm was imported'
        print('ok')
    ''')
    env = dict(os.environ, HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, '-c', script], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr
