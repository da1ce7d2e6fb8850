"""What ``nn.DataParallel`` over N GPUs computes, on one device (``train.py --dp-replicas N``).

The official RSG CIFAR script trains on two GPUs through ``nn.DataParallel``, which changes the maths, not only the
speed: every replica runs BatchNorm and RSG on its own share of the batch (its own head/tail split, CESC pairs and
generated samples), only the first replica's BatchNorm running statistics survive the step, and the auxiliary losses
arrive as one value per replica, which the official loop averages. On torch >= 1.5 the replicas also expose no
parameters, so the official ``requires_grad = False`` freeze of RSG's contrastive module in the generation phase
freezes nothing there. :class:`EmulatedDataParallel` reproduces all of it on one device (or per DDP process), so
the paper's two-GPU semantics can be trained and compared without two GPUs.
"""
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn

from .models.rsg_model import RSGMixin, RSGOutput

__all__ = ['EmulatedDataParallel']


class EmulatedDataParallel(nn.Module):
    """Run ``module`` as ``nn.DataParallel`` over ``replicas`` devices would, one share of the batch after another.

    In train mode with labels:

    * the batch is split as DataParallel's scatter splits it (``torch.chunk``: shares of ``ceil(B / N)`` rows, fewer
      shares when the batch is smaller than ``N``);
    * each share runs through the model on its own (BatchNorm batch statistics, RSG's head/tail split, pairing and
      generation per share); every share sees the buffers as they were before the step, and afterwards the buffers
      hold what the first share left (BatchNorm running statistics and counters of replica 0);
    * the logits and targets of all shares are returned in one batch, the real rows first in batch order, then each
      share's generated rows in share order. DataParallel's gather interleaves them per share instead; the
      classifier loss is one mean over all rows either way, and real-first keeps the engine's rule that the first
      ``B`` rows are the batch;
    * each auxiliary loss is the mean of the shares' values, as the official loop's ``.mean()`` over the gathered
      per-replica values;
    * RSG's contrastive module keeps training in the generation phase, as it does on DataParallel replicas.

    A plain model (no RSG) is split the same way and its logits concatenated. In eval mode it is the model
    (BatchNorm uses running statistics, so splitting changes nothing). ``module`` is the wrapped model, so
    ``timm.utils.unwrap_model`` and checkpoints see the plain model.
    """

    def __init__(self, module: nn.Module, replicas: int):
        super().__init__()
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f'--dp-replicas must be an integer >= 1, got {replicas!r}')
        self.module = module
        self.replicas = replicas
        if isinstance(module, RSGMixin):
            module.rsg.freeze_contrastive = False

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> Union[torch.Tensor, RSGOutput]:
        if not self.training:
            return self.module(x)
        images = x.chunk(self.replicas)
        labelled = target is not None and isinstance(self.module, RSGMixin)
        targets = target.chunk(self.replicas) if labelled else [None] * len(images)
        # Share 0 updates the model's own buffers, as replica 0 shares their storage; every other share gets copies
        # of the buffers as they were before the step, dropped afterwards. Fresh tensors rather than in-place
        # restores, since autograd may hold the buffers' versions (BatchNorm saves its running statistics).
        owned = [(m, name, b) for m in self.module.modules() for name, b in m.named_buffers(recurse=False)]
        before = [b.clone() for _, _, b in owned]
        outputs = []
        try:
            for i, (images_i, target_i) in enumerate(zip(images, targets)):
                if i:
                    for (m, name, _), saved in zip(owned, before):
                        setattr(m, name, saved.clone())
                outputs.append(self.module(images_i, target=target_i) if labelled else self.module(images_i))
        finally:
            for m, name, b in owned:
                setattr(m, name, b)
        if isinstance(outputs[0], torch.Tensor):  # a plain model: only BatchNorm differs from one device
            return torch.cat(outputs)
        return _merge(outputs, [len(t) for t in images])


def _merge(outputs: List[RSGOutput], sizes: List[int]) -> RSGOutput:
    """One output from the shares': real rows first (batch order), then the generated rows share by share."""
    real = [(o.logits[:n], o.target[:n]) for o, n in zip(outputs, sizes)]
    generated = [(o.logits[n:], o.target[n:]) for o, n in zip(outputs, sizes)]
    rows = real + generated
    aux: Dict[str, torch.Tensor] = {
        name: torch.stack([o.aux_losses[name] for o in outputs]).mean() for name in outputs[0].aux_losses}
    return RSGOutput(torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]), aux)
