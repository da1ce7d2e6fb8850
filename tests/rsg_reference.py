"""A literal, slow transcription of what the official RSG module computes, used only to check the vectorised RSG on
cases the golden vectors do not cover (odd batches, single samples, head-only / tail-only batches, strength != 1).

It follows the official algorithm step by step: it materialises the ``[B, K, C, H, W]`` differences and loops over MV
segments, exactly the things the real module avoids.
"""
import torch
import torch.nn.functional as F


def reference_rsg(rsg, f, target, head, epoch):
    """Spec-literal forward of ``rsg``'s parameters; returns ``(out, loss_cesc, loss_mv, out_target)``."""
    g = f.detach()
    B, C, H, W = g.shape
    pooled = g.mean(dim=(2, 3))
    logits = torch.stack([pooled[i] @ rsg.linear[target[i]] + rsg.bias[target[i]] for i in range(B)])
    gamma = logits.softmax(dim=1)
    centers = rsg.centers[target][:, :, :, None, None]  # [B, K, C, 1, 1]
    dist = (g[:, None] - centers).pow(2).sum(dim=(2, 3, 4))  # [B, K]
    loss_cesc = (gamma * dist).sum() / B
    if epoch <= rsg.epoch_thresh and B >= 2:
        half = B // 2
        pairs = torch.cat([g[:half], g[half:2 * half]], dim=1)
        q = rsg.contrastive_fc(rsg.contrastive_module(pairs))
        loss_cesc = loss_cesc + F.cross_entropy(q, (target[:half] == target[half:2 * half]).long())

    out, out_target = [f], [target]
    loss_mv = torch.zeros(())
    is_head = torch.tensor([int(t) in set(head) for t in target.tolist()], dtype=torch.bool)
    heads, tails = is_head.nonzero().flatten().tolist(), (~is_head).nonzero().flatten().tolist()
    nh, nt = len(heads), len(tails)
    if epoch > rsg.epoch_thresh and nh and nt:
        s = rsg.transfer_strength
        segments = max(1, int(max(nh, nt) * s / min(nh, nt)))
        cen = rsg.centers.detach()
        frozen = {k: v.detach() for k, v in rsg.contrastive_module.named_parameters()}
        frozen_fc = {k: v.detach() for k, v in rsg.contrastive_fc.named_parameters()}
        for j in range(segments):
            if nh >= nt:
                a, b = heads[j * nt:(j + 1) * nt], tails
            else:
                a, b = heads, tails[j * nh:(j + 1) * nh]
            n = len(a)
            ka, kb = gamma[a].argmax(1), gamma[b].argmax(1)
            v = g[a] - cen[target[a], ka][:, :, None, None]
            vt = rsg.vec_transformation_module(v)
            z = g[b] + vt
            u = g[b] - cen[target[b], kb][:, :, None, None]
            feats = torch.func.functional_call(rsg.contrastive_module, frozen, (torch.cat([g[a], vt], 1),))
            q = torch.func.functional_call(rsg.contrastive_fc, frozen_fc, (feats,))
            rv, rvt, ru = v.reshape(-1, C), vt.reshape(-1, C), u.reshape(-1, C)
            seg = F.cross_entropy(q, torch.zeros(n, dtype=torch.long)) + (
                (rvt.norm(dim=1) - rv.norm(dim=1)).abs().sum()
                + (ru / ru.norm(dim=1, keepdim=True).clamp_min(1e-12)
                   * rvt / rvt.norm(dim=1, keepdim=True).clamp_min(1e-12) - 1).abs().sum()) / n
            loss_mv = loss_mv + seg
            out.append(z)
            out_target.append(target[b])
        loss_mv = loss_mv / segments
    return torch.cat(out), loss_cesc, loss_mv, torch.cat(out_target)
