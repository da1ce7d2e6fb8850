"""The training step's wiring, on stub models: what is trained is the criterion plus every auxiliary term the model
names, and the engine switches the per-epoch state (model phase, sampler, class weights) itself."""
import pytest
import torch
import torch.nn as nn

from rsg_timm.engine import train_one_epoch
from rsg_timm.losses import create_loss, create_reweight
from rsg_timm.models import RSGOutput


class _StubRSG(nn.Module):
    """Answers ``target=`` like an rsg_* model: the batch's logits plus one generated sample, and auxiliary terms
    that only ``aux_param`` feeds, so its gradient shows whether they were trained. The names are not RSG's: the
    engine must sum and meter whatever arrives."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.aux_param = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, target=None):
        logits = self.fc(x)
        if target is None:
            return logits
        generated = self.fc(2 * x[:1])
        return RSGOutput(torch.cat([logits, generated]), torch.cat([target, target.new_tensor([2])]),
                         {'square': 0.1 * self.aux_param ** 2, 'linear': 0.03 * self.aux_param})


def test_trained_loss_is_criterion_plus_every_aux_term():
    model = _StubRSG()
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))

    out = model(x, target=y)
    expected = criterion(out.logits, out.target) + out.aux_losses['square'] + out.aux_losses['linear']
    expected_grads = dict(zip([n for n, _ in model.named_parameters()],
                              torch.autograd.grad(expected, list(model.parameters()))))

    seen = {}
    for name, p in model.named_parameters():
        p.register_hook(lambda grad, name=name: seen.__setitem__(name, grad.clone()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the step changes nothing: one batch, one gradient
    metrics = train_one_epoch(model, [(x, y)], criterion, optimizer, epoch=0, device=torch.device('cpu'),
                              log_interval=0)

    assert metrics['loss'] == pytest.approx(expected.item(), rel=1e-6)
    assert metrics['ce'] == pytest.approx(criterion(out.logits, out.target).item(), rel=1e-6)
    assert metrics['square'] == pytest.approx(0.025) and metrics['linear'] == pytest.approx(0.015)
    assert metrics['generated'] == 1
    assert sorted(seen) == sorted(expected_grads)  # the auxiliary terms reached their parameter
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
    assert metrics['generated'] == 0 and set(metrics) == {'loss', 'ce', 'generated', 'top1', 'lr', 'images_per_sec'}


class _GeneratingStub(nn.Module):
    """Answers ``target=`` like an rsg_* model in its generation phase: fixed logits for the real rows, then generated
    rows of the rarest class that are all predicted right, so a meter over every row would read higher."""

    def __init__(self, real_predictions):
        super().__init__()
        self.real_predictions = real_predictions
        self.scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x, target=None):
        real = nn.functional.one_hot(self.real_predictions, 3).float() * self.scale
        generated_target = torch.full((6,), 2)
        generated = nn.functional.one_hot(generated_target, 3).float() * self.scale
        return RSGOutput(torch.cat([real, generated]), torch.cat([target, generated_target]), {})


def test_train_top1_counts_the_real_rows_only():
    model = _GeneratingStub(real_predictions=torch.tensor([0, 1, 0, 1]))
    x, y = torch.zeros(4, 4), torch.tensor([0, 1, 2, 0])  # two of the four real rows right
    metrics = train_one_epoch(model, [(x, y)], nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0),
                              epoch=0, device=torch.device('cpu'), log_interval=0)
    assert metrics['generated'] == 6 and metrics['top1'] == 50.0


class _EpochLoader(list):
    """A loader without batches (only the switches run) that records the epochs it was switched to."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


class _EpochModel(nn.Linear):
    """A model with phases (an rsg_* model: CESC, then generation) that records the epochs it was switched to."""

    def __init__(self):
        super().__init__(4, 3)
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_engine_switches_the_per_epoch_state():
    counts = [30, 10, 2]
    model, loader = _EpochModel(), _EpochLoader()
    criterion = create_loss('ce', class_counts=counts)
    reweight = create_reweight('drw', counts, drw_epoch=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for epoch in range(3):
        train_one_epoch(model, loader, criterion, optimizer, epoch=epoch, device=torch.device('cpu'),
                        reweight=reweight)
        expected = reweight.weight_for_epoch(epoch)
        assert (criterion.weight is None) == (expected is None), epoch  # DRW: unweighted, then weighted
        if expected is not None:
            torch.testing.assert_close(criterion.weight, expected)
    assert model.epochs == [0, 1, 2] and loader.epochs == [0, 1, 2]


def test_per_update_schedule_counts_from_the_epoch():
    """A resumed epoch steps the per-update schedule from epoch * batches, as a straight run does (timm's rule)."""
    model, steps = nn.Linear(4, 3), []

    class _Scheduler:
        def step_update(self, num_updates):
            steps.append(num_updates)

    batches = [(torch.randn(2, 4), torch.tensor([0, 1]))] * 3
    train_one_epoch(model, batches, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.0), epoch=4,
                    device=torch.device('cpu'), lr_scheduler=_Scheduler(), log_interval=0)
    assert steps == [13, 14, 15]


def test_evaluate_reports_loss_and_ece_on_the_training_scale():
    """A cosine head's logits lie in [-1, 1]; LDAM fitted it to softmax(s * logits). Loss and ECE are those of the
    scaled logits, labelled with the scale; accuracy does not move."""
    from rsg_timm.engine import evaluate
    from rsg_timm.metrics import calibration_error

    cosine = torch.rand(40, 5, generator=torch.Generator().manual_seed(0)) * 2 - 1
    target = torch.arange(40) % 5
    loader = [(cosine[:25], target[:25]), (cosine[25:], target[25:])]
    common = dict(device=torch.device('cpu'), num_classes=5, class_counts=[500, 200, 50, 30, 5])
    scaled, _ = evaluate(nn.Identity(), loader, logit_scale=30.0, **common)
    unscaled, _ = evaluate(nn.Identity(), loader, **common)
    assert scaled['loss'] == pytest.approx(nn.functional.cross_entropy(30 * cosine, target).item(), rel=1e-6)
    assert scaled['ece'] == pytest.approx(calibration_error(30 * cosine, target)[0], rel=1e-6)
    assert scaled['ece'] != pytest.approx(unscaled['ece'])
    assert (scaled['logit_scale'], unscaled['logit_scale']) == (30.0, 1.0)
    assert all(scaled[k] == unscaled[k] for k in ('top1', 'top5', 'many', 'medium', 'few'))
