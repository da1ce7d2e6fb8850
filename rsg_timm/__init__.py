"""rsg_timm: RSG (Rare-class Sample Generator, CVPR 2021) for long-tailed classification on timm.

Importing this package registers the ``cifar_resnet*`` and ``rsg_*`` models with timm's registry, with the model
zoo's tags (``timm.list_pretrained()`` lists them) and every timm tag of each ``rsg_*`` backbone, and loads nothing
else: the data, loss, metrics and run-reading modules (and pandas) load when imported.
"""
import timm

from .version import __version__
from .dependencies import check_timm_version

check_timm_version(timm.__version__)  # before the model code touches timm's newer internals

from .rsg import RSG  # noqa: E402
from . import models  # noqa: E402,F401  (import registers the models with timm)

__all__ = ['RSG', '__version__']
