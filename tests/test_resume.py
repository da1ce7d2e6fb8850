"""``--resume`` and ``--fork`` continue a run as if it had not stopped: the run's flags come back (except those given
now), training goes on only on the same data, and every random generator training draws from (dropout, stochastic
depth, the loader's augmentation, in memory and in worker processes) draws what the uninterrupted run drew."""
import logging
import random
import shutil

import pytest
import torch

from rsg_timm.checkpoint import CheckpointError, load_training_checkpoint
from rsg_timm.rng import restore_rng_states, rng_states
from rsg_timm.train_flags import restored_on_resume

from helpers import load_script, train_args, write_demo_npz

train_script = load_script('train.py')
QUIET = ['--no-progress', '--log-interval', '0']
# dropout before the classifier and stochastic depth in the blocks: the run draws from torch's generator every step
DROPOUT = ['--model', 'cifar_resnet20', '--drop', '0.3', '--drop-path', '0.2']


def _weights(run_dir):
    checkpoint = load_training_checkpoint(str(run_dir / 'last.pth.tar'))
    return checkpoint['epoch'], checkpoint['state_dict']


def _assert_same_weights(run_dir, straight_dir):
    (epoch, got), (want_epoch, want) = _weights(run_dir), _weights(straight_dir)
    assert epoch == want_epoch and got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key  # bit for bit


def _straight(argv, run_dir, epochs):
    """A straight run of ``epochs`` that keeps every epoch's checkpoint, to resume or fork from any of them."""
    train_script.main([*argv, '--output', str(run_dir.parent), '--experiment', run_dir.name, '--epochs', str(epochs),
                       '--checkpoint-hist', str(epochs), *QUIET])
    return run_dir


def _resume_copy(straight_dir, run_dir, epoch, *argv):
    """Resume a copy of the straight run from its checkpoint of ``epoch``, as a run killed after that epoch."""
    shutil.copytree(straight_dir, run_dir)
    train_script.main(['--resume', str(run_dir / f'checkpoint-{epoch}.pth.tar'), *QUIET, *argv])


@pytest.fixture(scope='module')
def demo_straight(tiny_demo, tmp_path_factory):
    """Two epochs on the tiny demo set with dropout and stochastic depth."""
    run_dir = tmp_path_factory.mktemp('straight') / 'run'
    return _straight(['--data-dir', tiny_demo, '-b', '32', '--warmup-epochs', '0', *DROPOUT], run_dir, 2)


def test_a_resumed_run_draws_the_dropout_masks_of_the_straight_run(demo_straight, tmp_path):
    _resume_copy(demo_straight, tmp_path / 'run', epoch=0)
    _assert_same_weights(tmp_path / 'run', demo_straight)


def test_a_fork_draws_the_dropout_masks_of_the_run_it_branches_off(demo_straight, tiny_demo, tmp_path):
    train_script.main(train_args(tiny_demo, tmp_path, 'forked', *DROPOUT, '--fork',
                                 str(demo_straight / 'checkpoint-0.pth.tar')))
    _assert_same_weights(tmp_path / 'forked', demo_straight)


def test_a_checkpoint_without_the_newer_generator_states_still_resumes(demo_straight, tmp_path):
    """Checkpoints written before the Python and CUDA states were saved hold only torch's CPU state."""
    run_dir = tmp_path / 'run'
    shutil.copytree(demo_straight, run_dir)
    checkpoint = load_training_checkpoint(str(run_dir / 'checkpoint-0.pth.tar'))
    old = {k: v for k, v in checkpoint.items() if k not in set(rng_states()) - {'rng_state'}}
    torch.save(old, run_dir / 'checkpoint-0.pth.tar')
    train_script.main(['--resume', str(run_dir / 'checkpoint-0.pth.tar'), *QUIET])
    _assert_same_weights(run_dir, demo_straight)  # the demo's loader draws from no Python generator


@pytest.mark.parametrize('workers', [0, 2])
def test_a_run_on_image_files_resumes_as_the_straight_run(workers, tiny_folder, tmp_path):
    """timm's RandomResizedCrop draws from Python's ``random``, the flip from torch: in this process without
    workers, in each worker's seeded generators with them."""
    argv = ['--dataset', 'folder_lt', '--data-dir', tiny_folder, '--val-split', 'val', '-b', '8', '--workers',
            str(workers), '--warmup-epochs', '0', '--lr', '0.05', *DROPOUT]
    straight = _straight(argv, tmp_path / 'straight' / 'run', 2)
    _resume_copy(straight, tmp_path / 'run', 0, '--workers', str(workers))  # this machine's: not restored
    _assert_same_weights(tmp_path / 'run', straight)


# --- the run's flags -------------------------------------------------------------------------------------------

class _FlagsRestored(Exception):
    """Stops train.py once the resumed run's flags are in place, before anything uses them."""


def _resumed_flags(monkeypatch, tmp_path, stored, *argv):
    """The flags train.py resumes a checkpoint whose stored flags are ``stored`` with, given ``argv`` now."""
    path = tmp_path / 'run' / 'last.pth.tar'
    path.parent.mkdir()
    torch.save({'state_dict': {}, 'epoch': 0, 'args': train_script._parse_args([])}, path)
    saved = load_training_checkpoint(str(path))
    vars(saved['args']).update(stored)
    torch.save(saved, path)

    def stop(args):
        raise _FlagsRestored(args)
    monkeypatch.setattr(train_script, '_warn_unused_profile', stop)
    with pytest.raises(_FlagsRestored) as info:
        train_script.main(['--resume', str(path), *argv])
    return vars(info.value.args[0])


def test_a_resumed_run_gets_every_restorable_flag_back(monkeypatch, tmp_path):
    stored = {name: f'stored {name}' for name in restored_on_resume()}  # no flag's default
    args = _resumed_flags(monkeypatch, tmp_path, stored)
    assert {name: args[name] for name in stored if name != 'resume'} == {k: v for k, v in stored.items()
                                                                         if k != 'resume'}


def test_flags_given_by_a_config_at_resume_win_over_the_stored_ones_as_explicit_ones_do(monkeypatch, tmp_path):
    config = tmp_path / 'changed.yaml'
    config.write_text('lr: 0.123\n')
    stored = {name: f'stored {name}' for name in ('lr', 'drw_epoch', 'weight_decay')}
    args = _resumed_flags(monkeypatch, tmp_path, stored, '--config', str(config), '--drw-epoch', '7')
    assert (args['lr'], args['drw_epoch'], args['weight_decay']) == (0.123, 7, 'stored weight_decay')


# --- the same data ------------------------------------------------------------------------------------------------

def test_a_run_continues_only_on_the_class_profile_it_was_trained_on(demo_straight, tmp_path):
    other = write_demo_npz(tmp_path / 'other.npz', counts=[30, 30, 20, 12, 8, 6, 5, 4, 3, 2])
    run_dir = tmp_path / 'run'
    shutil.copytree(demo_straight, run_dir)
    with pytest.raises(CheckpointError, match=r'last.pth.tar was trained on class counts \[40, 30, .*\], not '
                                              r'\[30, 30, .*\]: resume with the same dataset flags'):
        train_script.main(['--resume', str(run_dir), '--epochs', '3', '--data-dir', other, *QUIET])
    with pytest.raises(CheckpointError, match=r'--fork .*: trained on class counts \[40, 30, .*\], not \[30, 30, .*\]: '
                                              r'fork with the same dataset flags'):
        train_script.main(train_args(other, tmp_path, 'forked', *DROPOUT, '--fork', str(run_dir / 'last.pth.tar')))


# --- the generators -----------------------------------------------------------------------------------------------

def test_generator_states_are_restored_and_cuda_ones_only_onto_as_many_devices(monkeypatch, caplog):
    saved = rng_states()
    expected = torch.rand(3), random.random()
    restore_rng_states(saved, 'CKPT')
    assert (torch.rand(3).tolist(), random.random()) == (expected[0].tolist(), expected[1])

    restored = []
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(torch.cuda, 'get_rng_state_all', lambda: ['state of cuda:0', 'state of cuda:1'])
    assert rng_states()['cuda_rng_states'] == ['state of cuda:0', 'state of cuda:1']
    monkeypatch.setattr(torch.cuda, 'set_rng_state_all', restored.append)
    states = [torch.zeros(8, dtype=torch.uint8), torch.ones(8, dtype=torch.uint8)]
    restore_rng_states({'cuda_rng_states': states}, 'CKPT')
    assert restored == [states]
    with caplog.at_level(logging.INFO, logger='rsg_timm.rng'):
        restore_rng_states({'cuda_rng_states': states[:1]}, 'CKPT')
    assert len(restored) == 1
    assert 'CKPT holds the CUDA random state of 1 devices, this process sees 2' in caplog.text
