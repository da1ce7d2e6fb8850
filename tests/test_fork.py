"""``train.py --fork``: a plain run branched off an RSG run before generation equals a straight plain run, bit for bit.

Before its threshold RSG reads only detached feature maps and adds no samples, so the backbone of an RSG run follows
the plain run's trajectory exactly; the fork saves the plain run's first epochs (the paper-recipe checkpoints of the
zoo rely on it: 160 of 200 epochs are shared).
"""
import os

import pytest
import torch

from rsg_timm.checkpoint import CheckpointError, load_training_checkpoint

from helpers import load_script

train_script = load_script('train.py')

# LDAM-DRW on the cosine head, with warm-up, a LR drop and DRW inside the 3 epochs, so the fork crosses every switch.
RECIPE = ['-b', '32', '--no-progress', '--log-interval', '0', '--warmup-epochs', '1', '--decay-milestones', '2', '3',
          '--drw-epoch', '2']


def _run(data, out, experiment, *extra):
    return train_script.main(['--data-dir', data, '--output', str(out), '--experiment', experiment, *RECIPE, *extra])


def _weights_and_momentum(run_dir):
    checkpoint = load_training_checkpoint(os.path.join(run_dir, 'last.pth.tar'))
    return checkpoint['epoch'], checkpoint['state_dict'], checkpoint['optimizer']['state']


def test_plain_run_forked_off_an_rsg_run_equals_the_straight_plain_run(tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, 'straight', '--model', 'cifar_resnet20', '--epochs', '3')
    # the RSG run stops after epoch 1, inside its CESC phase (generation would start at epoch 3)
    _run(tiny_demo, tmp_path, 'rsg', '--model', 'rsg_resnet20', '--rsg-epoch-thresh', '2', '--epochs', '2')
    rsg_checkpoint = str(tmp_path / 'rsg' / 'last.pth.tar')
    assert any(k.startswith('rsg.') for k in load_training_checkpoint(rsg_checkpoint)['state_dict'])
    _run(tiny_demo, tmp_path, 'forked', '--model', 'cifar_resnet20', '--epochs', '3', '--fork', rsg_checkpoint)

    epoch, straight, straight_momentum = _weights_and_momentum(tmp_path / 'straight')
    forked_epoch, forked, forked_momentum = _weights_and_momentum(tmp_path / 'forked')
    assert epoch == forked_epoch == 2
    assert straight.keys() == forked.keys() and not any(k.startswith('rsg.') for k in forked)
    for k, v in straight.items():
        assert torch.equal(v, forked[k]), k  # bit-identical weights and BN statistics
    assert straight_momentum.keys() == forked_momentum.keys()
    for i, state in straight_momentum.items():
        assert torch.equal(state['momentum_buffer'], forked_momentum[i]['momentum_buffer']), i


def test_fork_without_momentum_differs(tiny_demo, tmp_path):
    """The optimizer state is part of the fork: the same fork with fresh momentum ends elsewhere."""
    _run(tiny_demo, tmp_path, 'rsg', '--model', 'rsg_resnet20', '--rsg-epoch-thresh', '2', '--epochs', '1')
    rsg_checkpoint = str(tmp_path / 'rsg' / 'last.pth.tar')
    _run(tiny_demo, tmp_path, 'forked', '--model', 'cifar_resnet20', '--epochs', '2', '--fork', rsg_checkpoint)
    checkpoint = torch.load(rsg_checkpoint, weights_only=False)
    checkpoint['optimizer']['state'] = {}
    torch.save(checkpoint, tmp_path / 'no_momentum.pth.tar')
    _run(tiny_demo, tmp_path, 'fresh', '--model', 'cifar_resnet20', '--epochs', '2', '--fork',
         str(tmp_path / 'no_momentum.pth.tar'))
    _, forked, _ = _weights_and_momentum(tmp_path / 'forked')
    _, fresh, _ = _weights_and_momentum(tmp_path / 'fresh')
    assert not torch.equal(forked['fc.weight'], fresh['fc.weight'])


@pytest.mark.parametrize('extra,error,match', [
    (['--model', 'cifar_resnet32'], CheckpointError, 'lacks'),  # another backbone
    (['--model', 'cifar_resnet20', '--resume', 'x.pth.tar'], ValueError, 'one of them'),
])
def test_fork_refuses_what_cannot_continue(extra, error, match, tiny_demo, tmp_path):
    _run(tiny_demo, tmp_path, 'rsg', '--model', 'rsg_resnet20', '--epochs', '1')
    with pytest.raises(error, match=match):
        _run(tiny_demo, tmp_path, 'forked', '--epochs', '2', '--fork', str(tmp_path / 'rsg' / 'last.pth.tar'),
             *extra)


def test_forked_momentum_follows_the_parameters_device_and_dtype():
    """The source run is read onto the CPU while this run's model may sit on a GPU: the copied momentum must live
    where its parameter does (a CPU buffer beside a CUDA parameter stopped the first forked GPU step). Checked through
    the dtype, which the same conversion sets."""
    import timm
    from rsg_timm.resume import fork_training_state
    source = timm.create_model('cifar_resnet20', num_classes=10)
    source_opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source(torch.randn(2, 3, 32, 32)).sum().backward()
    source_opt.step()
    model = timm.create_model('cifar_resnet20', num_classes=10).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fork_training_state(source, source_opt, model, optimizer)
    for param in model.parameters():
        buffer = optimizer.state[param]['momentum_buffer']
        assert buffer.dtype == param.dtype and buffer.device == param.device
    model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).sum().backward()
    optimizer.step()  # the foreach SGD step accepts the copied buffers
