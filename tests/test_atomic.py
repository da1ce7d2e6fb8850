"""rsg_timm.atomic: a file is replaced whole or not at all, and keeps its permissions."""
import os

import pytest

from rsg_timm.atomic import atomic_write


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing(tmp_path):
    path = tmp_path / 'tags.json'
    path.write_text('old')
    with pytest.raises(RuntimeError, match='disk full'):
        with atomic_write(path) as f:
            f.write('half of the new')
            raise RuntimeError('disk full')
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['tags.json']


def test_a_clean_write_replaces_the_file_with_its_permissions(tmp_path):
    path = tmp_path / 'summary.csv'
    path.write_text('old')
    os.chmod(path, 0o640)
    with atomic_write(path, newline='') as f:
        f.write('new\r\n')
    assert path.read_bytes() == b'new\r\n' and (os.stat(path).st_mode & 0o777) == 0o640
    with atomic_write(tmp_path / 'weights.bin', 'wb') as f:  # a new file gets a plain open's permissions
        f.write(b'\x00\x01')
    umask = os.umask(0)
    os.umask(umask)
    assert (os.stat(tmp_path / 'weights.bin').st_mode & 0o777) == 0o666 & ~umask
    assert sorted(os.listdir(tmp_path)) == ['summary.csv', 'weights.bin']
