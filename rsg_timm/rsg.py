"""RSG: the Rare-class Sample Generator (Wang et al., "RSG: A Simple but Effective Module for Learning
Imbalanced Datasets", CVPR 2021), device-agnostic and vectorised.

The module reproduces the official implementation's outputs and gradients (``tests/test_rsg.py`` checks them against
golden vectors from the official code, ``tests/data``), including its quirks, with changes that do not alter the
maths:

* the centre distances are expanded algebraically instead of materialising ``[B, K, C, H, W]`` tensors;
* the pair classifier's 3x3 convolution, followed only by an average pool, is computed as window sums and a
  matmul (it is linear), and its 1x1 input convolution runs on the two halves instead of their concatenation;
* every MV segment is processed in one batched call instead of a Python loop (all segments have the same size,
  so the mean over segments of per-segment means is the mean over all pairs);
* the contrastive module is frozen after the threshold by running it with detached weights, so
  ``requires_grad`` never changes and DistributedDataParallel keeps a stable parameter set. Setting
  ``freeze_contrastive = False`` keeps it training instead, as the official code does on ``nn.DataParallel``
  replicas, where its freeze reaches no parameter (``rsg_timm.data_parallel``).

The only host synchronisation is reading the head/tail counts, which fix the number of generated samples; the labels'
range is asserted on the device. Every argument is checked when the module is built, not epochs later when generation
starts.
"""
import math
import numbers
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compat import assert_on_device

__all__ = ['RSG', 'RSGForwardOutput', 'check_transfer_strength', 'num_head_classes', 'plan_mv_pairs']


class RSGForwardOutput(NamedTuple):
    """What :meth:`RSG.forward` returns: the official 4-tuple, with names."""
    feature_maps: torch.Tensor  # [B + G, C, H, W]: the real maps, then the G generated ones
    loss_cesc: torch.Tensor
    loss_mv: torch.Tensor
    target: torch.Tensor  # [B + G]


def _gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a per-class parameter ``[N, ...]``, with one dense ``[N, ...]`` gradient buffer.

    Advanced indexing and ``index_select`` both backpropagate through a zero tensor plus an out-of-place scatter,
    i.e. two parameter-sized buffers (about 1 GB of transients at iNaturalist's N = 8142, C = 1024);
    ``embedding``'s backward scatters into a single one.
    """
    return F.embedding(index, table.reshape(table.shape[0], -1)).reshape(index.shape + table.shape[1:])


def _mean_of_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1).mean(dim=(2, 3))`` without the convolution, ``[P, D_out]``.

    The conv is linear and only its spatial mean is used, so the mean equals the bias plus, for each of the 9 kernel
    taps, the tap's weights applied to the sum of the input positions that tap reads (with zero padding: the whole
    map except the first or last row and/or column). That is 9 window sums per channel and one ``[P, 9D] x [9D, D]``
    matmul instead of a 3x3 conv over every position: H*W times fewer multiply-adds, same value and gradients.
    """
    H, W = x.shape[2:]
    rows = (slice(0, H - 1), slice(0, H), slice(1, H))  # tap row 0 reads rows 0..H-2, row 1 all, row 2 rows 1..H-1
    cols = (slice(0, W - 1), slice(0, W), slice(1, W))
    window_sums = torch.stack([x[:, :, r, c].sum(dim=(2, 3)) for r in rows for c in cols], dim=1)  # [P, 9, D_in]
    taps = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # [D_out, 9 * D_in], same (tap, channel) order
    return F.linear(window_sums.flatten(1), taps, bias * (H * W)) / (H * W)


def num_head_classes(head_ratio: float, num_classes: int) -> int:
    """How many classes are head classes, ``int(head_ratio * num_classes)``: the official rule (the most frequent
    classes; which ones is the caller's choice)."""
    return int(head_ratio * num_classes)


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'RSG: {name} must be an integer >= {minimum}, got {value!r}')
    return int(value)


def check_transfer_strength(transfer_strength: float) -> float:
    """``transfer_strength`` as a float when it lies in ``(0, 1]``; a ``ValueError`` naming ``--rsg-strength``
    otherwise.

    The strength sets the share ``S / (n_big // n_small)`` of the batch's full head/tail segments that generate
    samples, so 1 already generates the most the batch holds. The official code takes values above 1 but then
    slices past the end of the batch, which fails on mismatched shapes (or gives NaN losses) at the first generating
    epoch, so it never generates more either; such a value is refused here before training starts.
    """
    if isinstance(transfer_strength, bool) or not isinstance(transfer_strength, numbers.Real) \
            or not math.isfinite(transfer_strength) or not 0 < transfer_strength <= 1:
        raise ValueError(f'RSG: transfer_strength (--rsg-strength) must lie in (0, 1], got {transfer_strength!r}: at 1 '
                         f'(the default) every full head/tail segment of the batch generates samples, the most it '
                         f'holds (the official code fails above 1); lower values use that share of the segments')
    return float(transfer_strength)


def plan_mv_pairs(
        head_idx: torch.Tensor,
        tail_idx: torch.Tensor,
        transfer_strength: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pair head with tail samples the way the official segment loop does, as two index vectors.

    With ``nh >= nt`` segment ``j`` pairs heads ``[j*nt, (j+1)*nt)`` with every tail; otherwise it pairs every
    head with tails ``[j*nh, (j+1)*nh)``. The segment count is ``S = max(1, int(n_big * s / n_small))`` for the
    transfer strength ``s``; with ``0 < s <= 1`` every segment is full (:func:`check_transfer_strength` says why more
    is refused).

    Args:
        head_idx: batch positions of the head samples, in batch order (``[nh]``, ``nh >= 1``).
        tail_idx: batch positions of the tail samples, in batch order (``[nt]``, ``nt >= 1``).
        transfer_strength: the transfer strength ``s``, in ``(0, 1]``.

    Returns:
        ``(a, b)`` batch positions of the head and tail sample of every pair, segment after segment.
    """
    transfer_strength = check_transfer_strength(transfer_strength)
    nh, nt = head_idx.numel(), tail_idx.numel()
    big, small = max(nh, nt), min(nh, nt)
    segments = max(1, int(big * transfer_strength / small))
    if nh >= nt:
        return head_idx[:segments * nt], tail_idx.repeat(segments)
    return head_idx.repeat(segments), tail_idx[:segments * nh]


class RSG(nn.Module):
    """Rare-class Sample Generator, placed after one stage of a CNN during training only.

    Args:
        n_center: centres per class (``K``).
        feature_maps_shape: ``[C, H, W]`` of the stage output it receives.
        num_classes: number of classes (``N``).
        contrastive_module_dim: width of the contrastive (pair) classifier (``D``).
        head_class_lists: class ids treated as head classes; every other class is a tail class.
        transfer_strength: share of the batch's head/tail segments that generate samples (``s``, in ``(0, 1]``).
        epoch_thresh: last epoch of the CESC phase (``T``); generation runs for ``epoch > T``.
    """

    def __init__(
            self,
            n_center: int = 3,
            feature_maps_shape: Sequence[int] = (32, 16, 16),
            num_classes: int = 10,
            contrastive_module_dim: int = 128,
            head_class_lists: Sequence[int] = (),
            transfer_strength: float = 1.0,
            epoch_thresh: int = 100,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if len(feature_maps_shape) != 3:
            raise ValueError(f'feature_maps_shape must be [C, H, W], got {list(feature_maps_shape)}')
        self.C, self.H, self.W = (_check_int(f'feature_maps_shape[{i}]', v) for i, v in enumerate(feature_maps_shape))
        # 0 classes: timm's reset_classifier(0) (a feature extractor), which the rsg_* wrapper never trains
        self.num_classes = _check_int('num_classes', num_classes, minimum=0)
        self.n_center = _check_int('n_center (--rsg-n-center)', n_center)
        self.contrastive_module_dim = _check_int('contrastive_module_dim (--rsg-contrastive-dim)',
                                                 contrastive_module_dim)
        if isinstance(epoch_thresh, bool) or not isinstance(epoch_thresh, numbers.Integral):
            raise ValueError(f'RSG: epoch_thresh (--rsg-epoch-thresh) must be an integer epoch, got {epoch_thresh!r}')
        self.transfer_strength = check_transfer_strength(transfer_strength)
        self.epoch_thresh = int(epoch_thresh)
        C, K, D = self.C, n_center, contrastive_module_dim

        # Names and shapes follow the official module so its state_dict loads as is.
        self.linear = nn.Parameter(torch.randn(num_classes, C, K, **dd))
        self.bias = nn.Parameter(torch.ones(num_classes, K, **dd))
        self.centers = nn.Parameter(torch.zeros(num_classes, K, C, **dd))
        self.vec_transformation_module = nn.Sequential(nn.Conv2d(C, C, 3, padding=1, **dd))
        # The official module, kept as the parameters' home and as a callable; forward uses _pair_logits, which
        # computes the same function without the [P, 2C, H, W] concatenation and the full 3x3 convolution.
        self.contrastive_module = nn.Sequential(
            nn.Conv2d(2 * C, D, 1, **dd),
            nn.ReLU(),
            nn.Conv2d(D, D, 3, padding=1, **dd),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.contrastive_fc = nn.Linear(D, 2, **dd)
        self.freeze_contrastive = True  # the official single-device behaviour; see the module docstring
        self.register_buffer('head_mask', torch.zeros(num_classes, dtype=torch.bool, device=device), persistent=False)
        self.set_head_classes(head_class_lists)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.contrastive_fc.weight)
        nn.init.zeros_(self.contrastive_fc.bias)

    def extra_repr(self) -> str:
        return (
            f'feature_maps_shape={[self.C, self.H, self.W]}, num_classes={self.num_classes}, '
            f'n_center={self.n_center}, contrastive_module_dim={self.contrastive_module_dim}, '
            f'transfer_strength={self.transfer_strength}, epoch_thresh={self.epoch_thresh}, '
            f'num_head_classes={int(self.head_mask.sum())}'
        )

    def generates(self, epoch: int) -> bool:
        """Whether ``epoch`` is in the generation phase (after ``epoch_thresh``); before it, the CESC pair loss."""
        return epoch > self.epoch_thresh

    def set_head_classes(self, head_class_lists: Union[Sequence[int], torch.Tensor]) -> None:
        """Replace the stored head classes (used when ``forward`` gets no ``head_class_lists``)."""
        self.head_mask.copy_(self._head_mask(head_class_lists, self.head_mask.device))

    def _head_mask(self, head_class_lists: Union[Sequence[int], torch.Tensor], device) -> torch.Tensor:
        values = head_class_lists if torch.is_tensor(head_class_lists) else torch.as_tensor(list(head_class_lists))
        if values.dtype == torch.bool:
            raise ValueError('head_class_lists takes class ids, not a boolean mask; pass mask.nonzero().flatten()')
        if values.numel() and (values.is_floating_point() or values.is_complex()):
            raise ValueError(f'head_class_lists must hold integer class ids, got {values.dtype}')
        ids = values.long().flatten()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_classes):
            raise ValueError(f'head class ids must lie in [0, {self.num_classes}), got {ids.tolist()}')
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        mask[ids] = True
        return mask.to(device)

    def _center_logits(self, pooled: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample centre-assignment logits ``p_i · linear[y_i] + bias[y_i]``, ``[B, K]``."""
        linear = _gather_rows(self.linear, target).float()  # [B, C, K]
        return torch.einsum('bc,bck->bk', pooled, linear) + _gather_rows(self.bias, target).float()

    def _cesc_center_loss(self, g: torch.Tensor, pooled: torch.Tensor, gamma: torch.Tensor,
                          target: torch.Tensor) -> torch.Tensor:
        """``(1/B) Σ_i Σ_k γ_ik ||g_i − c_{y_i k}||²`` with the centre broadcast over positions, in float32.

        Expanded as ``||g_i||² − 2HW p_i·c + HW ||c||²`` so no ``[B, K, C, H, W]`` tensor exists.
        """
        hw = g.shape[2] * g.shape[3]
        centers = _gather_rows(self.centers, target).float()  # [B, K, C]
        sq_norm = g.float().pow(2).sum(dim=(1, 2, 3))  # [B]
        dist = sq_norm[:, None] - 2 * hw * torch.einsum('bc,bkc->bk', pooled, centers) + hw * centers.pow(2).sum(-1)
        return (gamma.float() * dist).sum() / g.shape[0]

    def _pair_logits(self, first: torch.Tensor, second: torch.Tensor, frozen: bool) -> torch.Tensor:
        """Logits of the contrastive (pair) classifier on the channel concatenation ``[first, second]``.

        The 1x1 input conv is applied to the two halves with the two halves of its weight and summed, which equals
        the conv of the concatenation without allocating the ``[P, 2C, H, W]`` tensor; the 3x3 conv and the average
        pool after it are computed together (:func:`_mean_of_conv3x3`). ``frozen`` runs the module with detached
        weights: gradients still reach the inputs, never the weights.
        """
        conv_in, conv_mid = self.contrastive_module[0], self.contrastive_module[2]
        weights = [conv_in.weight, conv_in.bias, conv_mid.weight, conv_mid.bias,
                   self.contrastive_fc.weight, self.contrastive_fc.bias]
        if frozen:
            weights = [w.detach() for w in weights]
        w_in, b_in, w_mid, b_mid, w_fc, b_fc = weights
        C = first.shape[1]
        x = F.relu(F.conv2d(first, w_in[:, :C], b_in) + F.conv2d(second, w_in[:, C:]))  # [P, D, H, W]
        return F.linear(_mean_of_conv3x3(x, w_mid, b_mid), w_fc, b_fc)

    def _cesc_pair_loss(self, g: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of "same class?" on (first half, second half) pairs; an odd last sample stays unpaired."""
        half = g.shape[0] // 2
        same = (target[:half] == target[half:2 * half]).long()
        return F.cross_entropy(self._pair_logits(g[:half], g[half:2 * half], frozen=False).float(), same)

    def _generate(self, g: torch.Tensor, target: torch.Tensor, gamma: torch.Tensor, a: torch.Tensor,
                  b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Transfer head variation onto tail samples for the pairs ``(a, b)``; returns ``(z, loss_mv)``."""
        nearest = gamma.argmax(dim=1)  # each sample's closest centre
        centers = self.centers.detach()
        c_head = centers[target[a], nearest[a]][:, :, None, None]  # [P, C, 1, 1]
        c_tail = centers[target[b], nearest[b]][:, :, None, None]
        g_head, g_tail = g[a], g[b]
        v = g_head - c_head.to(g.dtype)  # head variation around its closest centre
        v_t = self.vec_transformation_module(v)
        z = g_tail + v_t.to(g_tail.dtype)
        u = g_tail - c_tail.to(g.dtype)

        # The official code reshapes NCHW maps into rows of C *consecutive* elements (not per-position channel
        # vectors); the norm and direction terms keep that quirk.
        C = g.shape[1]
        rows_v, rows_vt, rows_u = (t.float().reshape(-1, C) for t in (v, v_t, u))
        norm_u, norm_vt = rows_u.norm(dim=1), rows_vt.norm(dim=1)
        norm_gap = (norm_vt - rows_v.norm(dim=1)).abs().sum()
        # Official: sum |normalize(u) * normalize(v') - 1| over every element. Each factor of a normalised row lies
        # in [-1, 1], so every product is <= 1 and the sum is (#elements - sum of the rows' cosines): no
        # [P, C, H, W] temporaries for the normalised rows, their product and its absolute value.
        eps = 1e-12  # F.normalize's
        cosines = (rows_u * rows_vt).sum(dim=1) / (norm_u.clamp_min(eps) * norm_vt.clamp_min(eps))
        direction = rows_u.numel() - cosines.sum()
        pair_logits = self._pair_logits(g_head, v_t.to(g_head.dtype), frozen=self.freeze_contrastive).float()
        n_pairs = a.numel()
        # Every segment holds the same number of pairs, so the mean of per-segment losses is the overall mean.
        loss_mv = F.cross_entropy(pair_logits, torch.zeros_like(a)) + (norm_gap + direction) / n_pairs
        return z, loss_mv

    def forward(
            self,
            feature_maps: torch.Tensor,
            head_class_lists: Optional[Union[Sequence[int], torch.Tensor]] = None,
            target: Optional[torch.Tensor] = None,
            epoch: int = 0,
    ) -> RSGForwardOutput:
        """Compute the CESC (and, after the threshold, MV) losses and append generated tail samples.

        Args:
            feature_maps: stage output ``[B, C, H, W]``; passed through with its gradient.
            head_class_lists: head class ids for this call; ``None`` uses the stored ones.
            target: labels ``[B]``.
            epoch: current epoch; :meth:`generates` switches from the pair loss to generation.

        Returns:
            ``(feature_maps, loss_cesc, loss_mv, target)`` with the generated samples appended.
        """
        if target is None:
            raise ValueError('RSG needs the batch labels: call it as rsg(feature_maps=f, target=y, epoch=e)')
        if feature_maps.dim() != 4 or feature_maps.shape[1] != self.C:
            raise ValueError(f'RSG expects feature maps [B, {self.C}, H, W], got {list(feature_maps.shape)}')
        if target.shape != feature_maps.shape[:1]:
            raise ValueError(f'target must have shape [{feature_maps.shape[0]}], got {list(target.shape)}')
        if target.dtype != torch.long:
            raise ValueError(f'target must hold int64 class ids, got {target.dtype}; pass target.long()')
        if target.device != feature_maps.device:
            raise ValueError(f'target is on {target.device} but feature_maps on {feature_maps.device}; move them '
                             f'to one device')
        if target.device.type in ('cpu', 'cuda'):  # the devices with an assert_on_device kernel
            try:  # checked where the labels are, with no host sync; CUDA reports a failure as a device-side assert
                assert_on_device(((target >= 0) & (target < self.num_classes)).all(), 'labels out of range')
            except RuntimeError:
                raise ValueError(f'target holds labels outside [0, {self.num_classes}): '
                                 f'{target.unique().tolist()}') from None
        head_mask = self.head_mask if head_class_lists is None else self._head_mask(head_class_lists,
                                                                                     target.device)
        g = feature_maps.detach()
        # Centre assignment and the CESC distances stay in float32 under autocast.
        with torch.autocast(device_type=g.device.type, enabled=False):
            pooled = g.float().mean(dim=(2, 3))  # [B, C]
            gamma = self._center_logits(pooled, target).float().softmax(dim=1)  # [B, K]
            loss_cesc = self._cesc_center_loss(g, pooled, gamma, target)
        generate = self.generates(epoch)
        if not generate and g.shape[0] >= 2:
            loss_cesc = loss_cesc + self._cesc_pair_loss(g, target)

        loss_mv = loss_cesc.new_zeros(())
        out, out_target = feature_maps, target
        if generate:
            is_tail = ~head_mask[target]
            num_tail = int(is_tail.sum())  # the one host sync: it fixes how many samples are generated
            num_head = target.numel() - num_tail
            if num_head and num_tail:
                order = torch.argsort(is_tail.to(torch.int8), stable=True)  # heads first, batch order kept
                a, b = plan_mv_pairs(order[:num_head], order[num_head:], self.transfer_strength)
                z, loss_mv = self._generate(g, target, gamma.detach(), a, b)
                out = torch.cat([feature_maps, z.to(feature_maps.dtype)], dim=0)
                out_target = torch.cat([target, target[b]], dim=0)
        return RSGForwardOutput(out, loss_cesc, loss_mv, out_target)
