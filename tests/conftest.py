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
