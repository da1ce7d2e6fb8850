"""The training step's wiring, on a stub model: what is trained is the criterion plus the model's auxiliary loss."""
import pytest
import torch
import torch.nn as nn

from rsg_timm.engine import train_one_epoch
from rsg_timm.models import RSGOutput


class _StubRSG(nn.Module):
    """Answers ``target=`` like an rsg_* model: the batch's logits plus one generated sample, and an auxiliary loss
    that only ``aux_param`` feeds, so its gradient shows whether the auxiliary loss was trained."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.aux_param = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, target=None):
        logits = self.fc(x)
        if target is None:
            return logits
        generated = self.fc(2 * x[:1])
        loss_cesc, loss_mv = self.aux_param ** 2, 3 * self.aux_param
        return RSGOutput(torch.cat([logits, generated]), torch.cat([target, target.new_tensor([2])]),
                         loss_cesc, loss_mv, 0.1 * loss_cesc + 0.01 * loss_mv)


def test_trained_loss_is_criterion_plus_aux():
    model = _StubRSG()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))

    out = model(x, target=y)
    expected = criterion(out.logits, out.target) + out.aux_loss
    expected_grads = dict(zip([n for n, _ in model.named_parameters()],
                              torch.autograd.grad(expected, list(model.parameters()))))

    seen = {}
    for name, p in model.named_parameters():
        p.register_hook(lambda grad, name=name: seen.__setitem__(name, grad.clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step changes nothing: one batch, one gradient
    metrics = train_one_epoch(model, [(x, y)], criterion, optimizer, epoch=0, device=torch.device('cpu'),
                              log_interval=0)

    assert metrics['loss'] == pytest.approx(expected.item(), rel=1e-6)
    assert metrics['ce'] == pytest.approx((expected - out.aux_loss).item(), rel=1e-6)
    assert metrics['cesc'] == pytest.approx(out.loss_cesc.item()) and metrics['mv'] == pytest.approx(1.5)
    assert metrics['generated'] == 1
    assert sorted(seen) == sorted(expected_grads)  # the auxiliary loss reached its parameter
    for name, grad in expected_grads.items():
        torch.testing.assert_close(seen[name], grad, msg=name)


def test_plain_model_trains_the_criterion_alone():
    model = nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    criterion = nn.CrossEntropyLoss()
    expected = criterion(model(x), y).item()
    metrics = train_one_epoch(model, [(x, y)], criterion, torch.optim.SGD(model.parameters(), lr=0.0), epoch=0,
                              device=torch.device('cpu'), log_interval=0)
    assert metrics['loss'] == pytest.approx(expected) == pytest.approx(metrics['ce'])
    assert metrics['cesc'] == metrics['mv'] == metrics['generated'] == 0
