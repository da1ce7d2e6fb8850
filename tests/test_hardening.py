"""Fault injection: no run destroys another's results, --resume continues the run it names, and bad input fails
at once with a message that names the file and the fix (issue 15)."""
import csv
import os

import pytest
import torch
import torch.nn as nn
from timm.utils import CheckpointSaver

from rsg_timm import RSG
from rsg_timm.checkpoint import CheckpointError, RunCheckpointSaver, find_resume_checkpoint, load_training_checkpoint

from conftest import load_script

train_script = load_script('train.py')

# A recipe unlike the defaults, so a resume that loses it shows. Two epochs: CESC in epoch 0, generation in epoch 1.
RECIPE = ['--model', 'rsg_resnet20', '--epochs', '2', '-b', '32', '--lr', '0.05', '--warmup-epochs', '0',
          '--rsg-epoch-thresh', '0', '--decay-milestones', '5', '6', '--drw-epoch', '1']
QUIET = ['--no-progress', '--log-interval', '0']


def _summary_epochs(run_dir):
    with open(os.path.join(run_dir, 'summary.csv')) as f:
        return [row['epoch'] for row in csv.DictReader(f)]


def _run(data, out, *extra):
    return train_script.main(['--data-dir', data, '--output', str(out), *RECIPE, *QUIET, *extra])


@pytest.fixture(scope='module')
def finished_run(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp('runs')
    result = _run(tiny_demo, out, '--experiment', 'run')
    return result['output_dir']


# --- 1. run folders ---------------------------------------------------------------------------------------------

def test_an_existing_run_folder_is_refused_before_any_work(finished_run, tiny_demo):
    last = os.path.join(finished_run, 'last.pth.tar')
    before = os.stat(last).st_mtime_ns
    with pytest.raises(ValueError, match='already exists.*--resume'):
        _run(tiny_demo, os.path.dirname(finished_run), '--experiment', 'run')
    assert os.stat(last).st_mtime_ns == before
    assert _summary_epochs(finished_run) == ['0', '1']


def test_default_run_names_in_the_same_second_get_their_own_folders(tiny_demo, tmp_path, monkeypatch):
    monkeypatch.setattr(train_script.time, 'strftime', lambda fmt: '20260101-000000')
    first = _run(tiny_demo, tmp_path, '--epochs', '1')['output_dir']
    second = _run(tiny_demo, tmp_path, '--epochs', '1')['output_dir']
    assert first != second and os.path.basename(second) == os.path.basename(first) + '-1'
    assert _summary_epochs(first) == _summary_epochs(second) == ['0']


# --- 3 and 13. --resume restores the recipe, continues in the run's folder, and rewrites the summary from there ---

def test_resume_restores_the_recipe_in_the_runs_own_folder(finished_run, tmp_path, caplog):
    run_dir = str(tmp_path / 'copy')
    os.makedirs(run_dir)
    for name in os.listdir(finished_run):
        with open(os.path.join(finished_run, name), 'rb') as src, open(os.path.join(run_dir, name), 'wb') as dst:
            dst.write(src.read())
    # Resume the copy from epoch 0 with no recipe flags (not even --data-dir): epoch 1 must be redone as it was.
    with caplog.at_level('INFO', logger='train'):
        result = train_script.main(['--resume', os.path.join(run_dir, 'checkpoint-0.pth.tar'), '--checkpoint-hist',
                                    '2', *QUIET])
    assert os.path.realpath(result['output_dir']) == os.path.realpath(run_dir)
    assert '--checkpoint-hist 2 (the run had 3)' in caplog.text
    assert _summary_epochs(run_dir) == ['0', '1']  # epoch 1 rewritten, not appended
    straight = load_training_checkpoint(os.path.join(finished_run, 'last.pth.tar'))
    resumed = load_training_checkpoint(os.path.join(run_dir, 'last.pth.tar'))
    assert resumed['epoch'] == 1 and resumed['args'].lr == 0.05 and resumed['args'].epochs == 2
    for k, v in straight['state_dict'].items():
        assert torch.equal(v, resumed['state_dict'][k]), k


def test_resume_refuses_another_output_folder(finished_run, tmp_path):
    with pytest.raises(ValueError, match='own folder'):
        train_script.main(['--resume', finished_run, '--output', str(tmp_path), '--experiment', 'new', *QUIET])
    assert not os.path.exists(tmp_path / 'new')


# --- 4, 10 and 13. the saver: atomic replace, recovery from tmp, a full disk, a kill before the numbered copy -----

def _saver(cls, folder, **kwargs):
    model = nn.Linear(2, 2)
    return cls(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=str(folder),
               recovery_dir=str(folder), **kwargs)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the point where it is raised runs."""


@pytest.mark.parametrize('cls,survives', [(CheckpointSaver, False), (RunCheckpointSaver, True)])
def test_a_kill_while_replacing_last_keeps_the_previous_one(cls, survives, tmp_path, monkeypatch):
    saver = _saver(cls, tmp_path)
    saver.save_checkpoint(0, metric=1.0)

    def killed(src, dst):
        raise _Killed
    monkeypatch.setattr(os, 'replace', killed)
    with pytest.raises(_Killed):
        saver.save_checkpoint(1, metric=2.0)
    monkeypatch.undo()
    assert os.path.isfile(tmp_path / 'last.pth.tar') is survives
    if survives:
        assert load_training_checkpoint(str(tmp_path / 'last.pth.tar'))['epoch'] == 0


def test_resume_finds_a_complete_tmp_when_last_is_gone(tmp_path):
    saver = _saver(RunCheckpointSaver, tmp_path)
    saver.save_checkpoint(0)
    os.replace(tmp_path / 'last.pth.tar', tmp_path / 'tmp.pth.tar')  # what timm's unlink-then-rename could leave
    for target in (str(tmp_path), str(tmp_path / 'last.pth.tar')):
        assert find_resume_checkpoint(target) == str(tmp_path / 'last.pth.tar')
    assert load_training_checkpoint(str(tmp_path / 'last.pth.tar'))['epoch'] == 0
    os.replace(tmp_path / 'last.pth.tar', tmp_path / 'tmp.pth.tar')
    with open(tmp_path / 'tmp.pth.tar', 'r+b') as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match='incomplete'):
        find_resume_checkpoint(str(tmp_path))
    os.makedirs(tmp_path / 'empty')
    with pytest.raises(FileNotFoundError, match='no last.pth.tar'):
        find_resume_checkpoint(str(tmp_path / 'empty'))  # neither file: not a run folder


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    saver = _saver(RunCheckpointSaver, tmp_path)
    saver.save_checkpoint(0)
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        with open(path, 'wb') as f:
            f.write(b'partial')
        raise RuntimeError('basic_ios::clear: iostream error')
    monkeypatch.setattr(torch, 'save', disk_full)
    with pytest.raises(CheckpointError, match=f'to {tmp_path} .*MB free: is the disk full.*previous last.pth.tar'):
        saver.save_checkpoint(1)
    monkeypatch.setattr(torch, 'save', real_save)
    assert not os.path.exists(tmp_path / 'tmp.pth.tar')
    assert load_training_checkpoint(str(tmp_path / 'last.pth.tar'))['epoch'] == 0


def test_restore_redoes_the_best_record_a_kill_interrupted(tmp_path, monkeypatch):
    saver = _saver(RunCheckpointSaver, tmp_path)
    saver.save_checkpoint(0, metric=1.0)
    monkeypatch.setattr(saver, '_retain', lambda epoch, metric: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):  # killed after last.pth.tar (epoch 1, the best) was written, before its copies
        saver.save_checkpoint(1, metric=2.0)
    last = str(tmp_path / 'last.pth.tar')
    resumed = _saver(RunCheckpointSaver, tmp_path)
    resumed.restore(load_training_checkpoint(last), last)
    assert (resumed.best_epoch, resumed.best_metric) == (1, 2.0)
    assert load_training_checkpoint(str(tmp_path / 'model_best.pth.tar'))['epoch'] == 1
    assert os.path.isfile(tmp_path / 'checkpoint-1.pth.tar')


# --- 5 and 14. RSG arguments are checked where they are given ----------------------------------------------------

@pytest.mark.parametrize('kwargs,match', [
    (dict(n_center=0), 'n_center'),
    (dict(contrastive_module_dim=0), 'contrastive_module_dim'),
    (dict(transfer_strength=float('nan')), 'transfer_strength'),
    (dict(transfer_strength=float('inf')), 'transfer_strength'),
    (dict(num_classes=0), 'num_classes'),
    (dict(feature_maps_shape=(8, 0, 4)), r'feature_maps_shape\[1\]'),
    (dict(epoch_thresh=1.5), 'epoch_thresh'),
])
def test_rsg_constructor_rejects_what_would_fail_at_generation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSG(**dict(dict(feature_maps_shape=(8, 4, 4), num_classes=6), **kwargs))


def test_rsg_n_center_zero_fails_when_the_model_is_built(tiny_demo, tmp_path):
    with pytest.raises(ValueError, match='rsg-n-center'):
        _run(tiny_demo, tmp_path, '--experiment', 'bad', '--rsg-n-center', '0')


@pytest.mark.parametrize('target,match', [
    (torch.tensor([0, 1, 2, 3], dtype=torch.uint8), 'int64'),
    (torch.tensor([0., 1., 2., 3.]), 'int64'),
    (torch.tensor([0, 1, 2, 6]), r'outside \[0, 6\): \[0, 1, 2, 6\]'),
    (torch.tensor([-1, 1, 2, 3]), 'outside'),
])
@pytest.mark.parametrize('epoch', [0, 9], ids=['cesc', 'mv'])
def test_rsg_forward_names_bad_targets(target, match, epoch):
    rsg = RSG(feature_maps_shape=(8, 4, 4), num_classes=6, head_class_lists=[0, 1], epoch_thresh=5)
    with pytest.raises(ValueError, match=match):
        rsg(feature_maps=torch.randn(4, 8, 4, 4), target=target, epoch=epoch)


def test_rsg_refuses_a_boolean_head_mask_and_float_ids():
    rsg = RSG(feature_maps_shape=(8, 4, 4), num_classes=6)
    with pytest.raises(ValueError, match='boolean mask'):
        rsg.set_head_classes(torch.tensor([True, True, False, False, False, False]))
    with pytest.raises(ValueError, match='boolean mask'):
        rsg(feature_maps=torch.randn(4, 8, 4, 4), head_class_lists=[True, False], target=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match='integer class ids'):
        rsg.set_head_classes(torch.tensor([0.5]))


def test_rsg_refuses_targets_on_another_device():
    rsg = RSG(feature_maps_shape=(8, 4, 4), num_classes=6)
    with pytest.raises(ValueError, match='one device'):
        rsg(feature_maps=torch.randn(4, 8, 4, 4), target=torch.tensor([0, 1, 2, 3], device='meta'))
