"""Under DDP the classifier loss is one mean over every process's rows, real and generated, however many rows each
process has: two gloo processes with 4 and 7 rows take the step one process takes on all 11."""
import socket
from typing import NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from rsg_timm.engine import train_one_epoch
from rsg_timm.losses import create_loss, list_losses

COUNTS = [50, 30, 10]


class _Out(NamedTuple):
    logits: torch.Tensor
    target: torch.Tensor
    aux_losses: dict


class _Generating(nn.Module):
    """A linear classifier that, like RSG, returns extra rows in training: rank r repeats its first 3r rows."""

    def __init__(self, extra: int):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.extra = extra

    def forward(self, x, target=None):
        x, target = torch.cat([x, x[:self.extra]]), torch.cat([target, target[:self.extra]])
        return _Out(self.fc(x), target, {})


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.tensor([0, 1, 2, 0, 2, 1, 0, 2])


def _criterion():
    criterion = create_loss('ce', class_counts=COUNTS)
    criterion.set_class_weight(torch.tensor([0.5, 1.0, 2.0]))  # DRW-style weights: a weighted mean
    return criterion


def _worker(rank: int, port: int, result_path: str):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    torch.manual_seed(0)
    model = _Generating(extra=3 * rank)
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = _data()
    batch = [(x[4 * rank:4 * rank + 4], y[4 * rank:4 * rank + 4])]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(ddp, batch, _criterion(), optimizer, epoch=0, device=torch.device('cpu'), log_interval=0)
    if rank == 0:
        torch.save(model.fc.weight.detach().clone(), result_path)
    dist.destroy_process_group()


def test_ddp_classifier_loss_is_one_mean_over_all_rows(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(port, str(tmp_path / 'weight.pt')), nprocs=2, start_method='spawn')
    ddp_weight = torch.load(tmp_path / 'weight.pt')

    torch.manual_seed(0)
    single = _Generating(extra=0)
    x, y = _data()
    rows = torch.cat([x[:4], x[4:8], x[4:7]]), torch.cat([y[:4], y[4:8], y[4:7]])  # rank 1's 3 extra rows
    _criterion()(single.fc(rows[0]), rows[1]).backward()
    expected = single.fc.weight.detach() - single.fc.weight.grad
    assert torch.allclose(ddp_weight, expected, atol=1e-6)
    # the mean of the two processes' means is another step: the test tells them apart
    per_process = _Generating(extra=0)
    per_process.load_state_dict(single.state_dict())
    with torch.no_grad():
        per_process.fc.weight.add_(single.fc.weight.grad)  # back to the initial weights
    per_process.zero_grad()
    loss = sum(_criterion()(per_process.fc(r[0]), r[1]) for r in (
        (x[:4], y[:4]), (torch.cat([x[4:8], x[4:7]]), torch.cat([y[4:8], y[4:7]])))) / 2
    loss.backward()
    assert not torch.allclose(ddp_weight, per_process.fc.weight.detach() - per_process.fc.weight.grad, atol=1e-4)


@pytest.mark.parametrize('name', list_losses())
def test_mean_denominator_splits_every_loss_exactly(name):
    """For every loss, the means of two parts weighted by their denominators give the mean of the whole batch: what
    the DDP rescaling relies on (a weighted mean divides by the rows' class weights, focal's by the row count)."""
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(11, 3, generator=g), torch.randint(0, 3, (11,), generator=g)
    criterion = create_loss(name, class_counts=COUNTS)
    criterion.set_class_weight(torch.tensor([0.5, 1.0, 2.0]))
    parts = [(logits[:4], target[:4]), (logits[4:], target[4:])]
    dens = [criterion.mean_denominator(t) for _, t in parts]
    combined = sum(criterion(lg, t) * d for (lg, t), d in zip(parts, dens)) / sum(dens)
    assert torch.allclose(combined, criterion(logits, target), atol=1e-6)
