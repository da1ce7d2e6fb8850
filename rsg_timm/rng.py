"""The random-number generators a training run draws from in its own process, captured into each checkpoint and put
back when a run continues (``--resume``, ``--fork``), so that it draws what the uninterrupted run would have drawn.

* torch's CPU generator: dropout, stochastic depth, and the per-image transforms of a file dataset loaded without
  workers (torchvision's crop and flip);
* torch's CUDA generators, one per device: dropout and stochastic depth on a GPU;
* Python's ``random``: timm's ``RandomResizedCrop`` parameters, in a file dataset loaded without workers.

numpy's global generator is left out: nothing in the training path draws from it. Loader workers are seeded by their
loader from the run's seed and the epoch (``rsg_timm.data.loader``), and the in-memory datasets and the samplers draw
from their own per-epoch generators, so none of them needs saving.
"""
import logging
import random
from typing import Any, Dict, Mapping

import torch

__all__ = ['rng_states', 'restore_rng_states']

_logger = logging.getLogger(__name__)

# 'rng_state' (torch's CPU generator) is the one key checkpoints written before the others carry.
TORCH_KEY, CUDA_KEY, PYTHON_KEY = 'rng_state', 'cuda_rng_states', 'python_rng_state'


def rng_states() -> Dict[str, Any]:
    """The generators' states as checkpoint entries (tensors and tuples of numbers: ``weights_only`` reads them)."""
    states = {TORCH_KEY: torch.get_rng_state(), PYTHON_KEY: random.getstate()}
    if torch.cuda.is_available():
        states[CUDA_KEY] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(checkpoint: Mapping[str, Any], source: str) -> None:
    """Put back the generators' states that ``checkpoint`` (read from ``source``) holds; an older checkpoint holds
    only torch's CPU state. CUDA states are restored only onto as many devices as wrote them, and a log line says
    when they are not, as the run then draws other dropout masks on the GPU than the uninterrupted run."""
    if TORCH_KEY in checkpoint:
        torch.set_rng_state(checkpoint[TORCH_KEY])
    if PYTHON_KEY in checkpoint:
        random.setstate(checkpoint[PYTHON_KEY])
    cuda_states = checkpoint.get(CUDA_KEY)
    if cuda_states is None:
        return
    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if devices == len(cuda_states):
        torch.cuda.set_rng_state_all(cuda_states)
    else:
        _logger.info(f'{source} holds the CUDA random state of {len(cuda_states)} devices, this process sees '
                     f'{devices}: the CUDA generators are not restored, so GPU dropout draws differ from the '
                     f'uninterrupted run')
