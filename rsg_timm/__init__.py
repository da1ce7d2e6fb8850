"""rsg_timm: RSG (Rare-class Sample Generator, CVPR 2021) for long-tailed classification on timm.

Importing this package registers the ``cifar_resnet*`` and ``rsg_*`` models with timm's registry and loads
nothing else: the data, loss, metrics and run-reading modules (and pandas) load when imported, and the model
zoo's table on the first tagged ``create_model``.
"""
from .version import __version__
from .rsg import RSG
from . import models  # noqa: F401  (import registers the models with timm)

__all__ = ['RSG', '__version__']
