"""Write a file so that no reader, and no kill, ever sees half of it: write a hidden file beside it, then rename."""
import contextlib
import os
import tempfile
from typing import IO, Iterator, Union

__all__ = ['atomic_write']


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike], mode: str = 'w', **open_kwargs) -> Iterator[IO]:
    """Open a temporary file in ``path``'s folder; on a clean exit it replaces ``path`` in one ``os.replace``, on an
    error it is removed and ``path`` keeps its old content. The file keeps ``path``'s permissions, or gets those of
    a plain ``open`` when it is new.

    Args:
        path: the file to write.
        mode: ``'w'`` (text) or ``'wb'`` (binary).
        open_kwargs: further ``open`` arguments, e.g. ``newline=''`` for ``csv``.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=folder or '.', prefix=f'.{name}.', suffix='.partial')
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
        os.chmod(tmp, _mode_of(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _mode_of(path: str) -> int:
    """``path``'s permission bits, or a new file's under the process umask (mkstemp makes its file 0600)."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
