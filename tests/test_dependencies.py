"""The declared timm floor, and the one-line error at import when an older timm is installed."""
import configparser
import os
import subprocess
import sys

import pytest

from helpers import REPO_DIR
from rsg_timm.dependencies import MIN_TIMM_VERSION, check_timm_version


@pytest.mark.parametrize('version', ['1.0.31', '1.0.32.dev0', '1.0.40', '1.1.0'])
def test_supported_timm_versions_pass(version):
    check_timm_version(version)


@pytest.mark.parametrize('version', ['1.0.30', '1.0.20', '0.9.16', '1.0.31'[:3]])
def test_older_timm_is_refused_naming_the_fix(version):
    with pytest.raises(ImportError, match=r'needs timm>=1\.0\.31.*pip install "timm>=1\.0\.31,<1\.1"'):
        check_timm_version(version)


def test_setup_cfg_declares_the_floor_the_import_checks():
    config = configparser.ConfigParser()
    config.read(os.path.join(REPO_DIR, 'setup.cfg'))
    requires = [line.strip() for line in config['options']['install_requires'].splitlines() if line.strip()]
    floor = '.'.join(map(str, MIN_TIMM_VERSION))
    assert f'timm>={floor},<1.1' in requires


def test_import_refuses_an_old_timm_in_one_line():
    code = 'import timm; timm.__version__ = "1.0.20"; import rsg_timm'
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_DIR, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO_DIR))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        'ImportError: rsg_timm needs timm>=1.0.31, but timm 1.0.20 is installed; '
        'run: pip install "timm>=1.0.31,<1.1"')
