"""The oldest timm this package runs on, checked once at import so an older install fails with one clear line
instead of an ``AttributeError`` deep inside training (setup.cfg declares the same floor)."""
import re
from typing import Tuple

__all__ = ['MIN_TIMM_VERSION', 'check_timm_version']

# 1.0.31: the first timm with get_device_dtype, get_model_args and the CheckpointSaver internals (rsg_timm/compat.py).
MIN_TIMM_VERSION = (1, 0, 31)


def _release(version: str) -> Tuple[int, ...]:
    """The numeric release of a version string: '1.0.32.dev0' -> (1, 0, 32)."""
    match = re.match(r'\d+(?:\.\d+)*', version)
    return tuple(int(part) for part in match.group(0).split('.')) if match else ()


def check_timm_version(version: str) -> None:
    """Raise ``ImportError`` unless ``version`` (timm's ``__version__``) is at least :data:`MIN_TIMM_VERSION`."""
    if _release(version) < MIN_TIMM_VERSION:
        floor = '.'.join(map(str, MIN_TIMM_VERSION))
        raise ImportError(f'rsg_timm needs timm>={floor}, but timm {version} is installed; '
                          f'run: pip install "timm>={floor},<1.1"')
