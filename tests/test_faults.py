"""Kills, crashes and bad states at every step of a run lose nothing and are never silently wrong (issue 23).

A kill is injected deterministically: the chosen write, rename or link into the run folder raises ``_Killed``, a
``BaseException`` like the ``SystemExit`` of a signal handler, so nothing after that point runs.
"""
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub.utils import httpx
from safetensors.torch import load_file
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

import rsg_timm
from rsg_timm import hub
from rsg_timm.checkpoint import CheckpointError, RunCheckpointSaver, load_training_checkpoint
from rsg_timm.eval_model import create_eval_model
from rsg_timm.cli import run_cli
from rsg_timm.data import create_lt_dataset
from rsg_timm.engine import DivergedError, NonFiniteLossError, train_one_epoch
from rsg_timm.publish import export_run
from rsg_timm.models.pretrained import load_pretrained_tags
from rsg_timm.recipes import resolve_recipe
from rsg_timm.run_folder import LOCK_FILE, died_before_first_checkpoint, lock_run_dir, read_run

from helpers import REPO_DIR, load_script, train_args

train_script = load_script('train.py')
validate_script = load_script('validate.py')

# --val-split val: on the demo, the test images under another name; --select-on val exports model_best.pth.tar
QUIET = ['--no-progress', '--log-interval', '0']
RECIPE = ['--model', 'rsg_resnet20', '--rsg-epoch-thresh', '0', '--select-on', 'val', '--val-split', 'val']


@pytest.fixture(autouse=True)
def _no_lingering_log_handlers():
    """train.py adds a stderr log handler per run (timm's setup_default_logging); one bound to a test's captured
    stderr must not outlive the test, or later runs log into a closed stream."""
    before = list(logging.root.handlers)
    yield
    for handler in logging.root.handlers[:]:
        if handler not in before:
            logging.root.removeHandler(handler)


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the point where it is raised runs."""


class _KillSwitch:
    """Records every ``torch.save``, ``os.replace`` and ``os.link`` into ``run_dir`` as ``'<call> <file name>'``, and
    raises :class:`_Killed` at step ``kill_at`` (counted from 0)."""

    def __init__(self, monkeypatch, run_dir, kill_at=None):
        self.run_dir, self.kill_at, self.steps = os.path.realpath(run_dir), kill_at, []
        for module, name, dst_index in ((torch, 'save', 1), (os, 'replace', 1), (os, 'link', 1)):
            monkeypatch.setattr(module, name, self._wrap(f'{module.__name__}.{name}', getattr(module, name),
                                                         dst_index))

    def _wrap(self, call, fn, dst_index):
        def step(*args, **kwargs):
            dst = args[dst_index] if len(args) > dst_index else None
            if isinstance(dst, (str, os.PathLike)) and os.path.realpath(os.path.dirname(os.fspath(dst))) == \
                    self.run_dir:
                self.steps.append(f'{call} {os.path.basename(dst)}')
                if len(self.steps) - 1 == self.kill_at:
                    raise _Killed(self.steps[-1])
            return fn(*args, **kwargs)
        return step


def _train(data, out, experiment, *extra):
    return train_script.main(train_args(data, out, experiment, *RECIPE, *extra))


def _resume(run_dir):
    return train_script.main(['--resume', str(run_dir), *QUIET])


def _resume_end(run_dir):
    """Resume a copy of a finished run as one whose end was cut short: it redoes the final evaluation and export
    (a run that ended completely is refused as having nothing to resume)."""
    os.remove(run_dir / 'per_class.csv')
    return _resume(run_dir)


@pytest.fixture(scope='module')
def straight(tiny_demo, tmp_path_factory):
    """The uninterrupted run every killed one must end up as, and its steps (writes, renames, links)."""
    run_dir = tmp_path_factory.mktemp('straight') / 'run'
    with pytest.MonkeyPatch.context() as patch:
        switch = _KillSwitch(patch, run_dir)
        result = _train(tiny_demo, run_dir.parent, run_dir.name)
    assert result['best_epoch'] == 1  # so a kill before model_best's update in epoch 1 would export epoch 0
    return run_dir, switch.steps


def _assert_same_run(run_dir, straight_dir):
    for name in ('last.pth.tar', 'model_best.pth.tar'):
        got, want = (load_training_checkpoint(os.path.join(d, name)) for d in (run_dir, straight_dir))
        assert got['epoch'] == want['epoch'], name
        for key, value in want['state_dict'].items():
            assert torch.equal(got['state_dict'][key], value), (name, key)
    got, want = (load_file(os.path.join(d, 'model.safetensors')) for d in (run_dir, straight_dir))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    for name in ('config.json', 'per_class.csv'):
        with open(os.path.join(run_dir, name)) as f, open(os.path.join(straight_dir, name)) as g:
            assert f.read() == g.read(), name
    create_eval_model(f'local-dir:{run_dir}')


def _kill_and_recover(tiny_demo, tmp_path, monkeypatch, straight, step):
    """Kill the run at ``step``, then do what its user would: --resume it, or start it again when it died before
    its first checkpoint; it must end as the uninterrupted run."""
    straight_dir, steps = straight
    run_dir = tmp_path / 'run'
    with monkeypatch.context() as patch:
        _KillSwitch(patch, run_dir, kill_at=step)
        with pytest.raises(_Killed, match=steps[step]):
            _train(tiny_demo, tmp_path, 'run')
    if died_before_first_checkpoint(str(run_dir)):
        result = _train(tiny_demo, tmp_path, 'run')
    else:
        result = _resume(run_dir)
    assert result['best_epoch'] == 1 and result['output_dir'] == str(run_dir)
    _assert_same_run(run_dir, straight_dir)


# --- 1 and 2. a kill in the final epoch or the export: --resume completes the run as if it had not happened -------

@pytest.mark.parametrize('step_name', ['os.link model_best.pth.tar.partial', 'os.replace model.safetensors'])
def test_resume_completes_a_run_killed_in_its_final_save_or_export(step_name, tiny_demo, tmp_path, monkeypatch,
                                                                   straight):
    steps = straight[1]
    step = max(i for i, s in enumerate(steps) if s == step_name)
    _kill_and_recover(tiny_demo, tmp_path, monkeypatch, straight, step)


@pytest.mark.slow
def test_every_kill_point_of_a_run_recovers_to_the_uninterrupted_run(tiny_demo, tmp_path, monkeypatch, straight):
    """Every write, rename and link of both epochs and of the export (18 steps)."""
    for step in range(len(straight[1])):
        _kill_and_recover(tiny_demo, tmp_path / str(step), monkeypatch, straight, step)


def test_a_kill_before_model_best_is_replaced_is_repaired_on_resume(tmp_path, monkeypatch):
    model = torch.nn.Linear(2, 2)
    saver = RunCheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=str(tmp_path),
                               recovery_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=1.0)
    with monkeypatch.context() as patch:
        _KillSwitch(patch, tmp_path, kill_at=4)  # save tmp, replace last, link + replace checkpoint-1, then killed
        with pytest.raises(_Killed, match='model_best'):
            saver.save_checkpoint(1, metric=2.0)
    assert os.path.isfile(tmp_path / 'checkpoint-1.pth.tar')
    assert load_training_checkpoint(str(tmp_path / 'model_best.pth.tar'))['epoch'] == 0
    last = str(tmp_path / 'last.pth.tar')
    resumed = RunCheckpointSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=str(tmp_path),
                                 recovery_dir=str(tmp_path))
    resumed.restore(load_training_checkpoint(last), last)
    assert load_training_checkpoint(str(tmp_path / 'model_best.pth.tar'))['epoch'] == resumed.best_epoch == 1


# --- 5. args.yaml is replaced in one step, and only when the flags changed -----------------------------------------

def test_args_yaml_survives_a_kill_while_written_and_is_left_alone_when_unchanged(straight, tmp_path, monkeypatch):
    run_dir = tmp_path / 'run'
    shutil.copytree(straight[0], run_dir)
    before = (run_dir / 'args.yaml').read_text()
    with monkeypatch.context() as patch:
        patch.setattr(train_script.yaml, 'safe_dump', lambda *args, **kwargs: (_ for _ in ()).throw(_Killed()))
        with pytest.raises(_Killed):
            _resume_end(run_dir)
    assert (run_dir / 'args.yaml').read_text() == before
    _resume(run_dir)  # records the --resume
    resumed = os.stat(run_dir / 'args.yaml')
    _resume_end(run_dir)
    assert os.stat(run_dir / 'args.yaml').st_mtime_ns == resumed.st_mtime_ns


# --- 6. a diverged epoch is not saved, and the message names the checkpoint to continue from ----------------------

def test_a_diverged_epoch_is_not_saved_and_the_last_good_checkpoint_is_named(tiny_demo, tmp_path, monkeypatch):
    real = train_script.train_one_epoch

    def diverges_in_epoch_1(*args, **kwargs):
        metrics = real(*args, **kwargs)
        return dict(metrics, ce=1e6) if kwargs['epoch'] == 1 else metrics
    monkeypatch.setattr(train_script, 'train_one_epoch', diverges_in_epoch_1)
    run_dir = tmp_path / 'run'
    with pytest.raises(DivergedError, match=f'epoch 1 was saved; the last good checkpoint is {run_dir}/last.pth.tar '
                                            f'\\(epoch 0\\): continue with --resume {run_dir}/last.pth.tar'):
        _train(tiny_demo, tmp_path, 'run')
    for name in ('last.pth.tar', 'model_best.pth.tar'):
        assert load_training_checkpoint(str(run_dir / name))['epoch'] == 0
    assert not (run_dir / 'checkpoint-1.pth.tar').exists()
    with open(run_dir / 'summary.csv') as f:
        assert [line.split(',')[0] for line in f.read().splitlines()[1:]] == ['0']


def test_an_empty_args_yaml_is_refused_and_resume_writes_it_again(straight, tmp_path):
    run_dir = tmp_path / 'run'
    shutil.copytree(straight[0], run_dir)
    (run_dir / 'args.yaml').write_text('')
    for read in (read_run, lambda run: export_run(run, tmp_path / 'staged'),
                 lambda run: validate_script._training_record(f'local-dir:{run}', '')):
        with pytest.raises(ValueError, match=f'{run_dir}/args.yaml is empty .*--resume {run_dir} writes it again'):
            read(run_dir)
    _resume(run_dir)
    assert read_run(run_dir).args['lr'] == 0.1


# --- 7. an export whose config.json disagrees on the class count is refused, not run with a random head ----------

@pytest.mark.parametrize('edit', [
    lambda c: c['model_args'].update(num_classes=5),  # timm then drops the weights' head for a random one
    lambda c: c.update(num_classes=5),
    lambda c: c.update(class_counts=[3, 2, 1]),
], ids=['model_args', 'num_classes', 'class_counts'])
def test_an_export_disagreeing_on_its_class_count_is_refused(edit, straight, tmp_path):
    for name in ('config.json', 'model.safetensors'):
        shutil.copy(straight[0] / name, tmp_path / name)
    config = json.loads((tmp_path / 'config.json').read_text())
    edit(config)
    (tmp_path / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match='config.json disagrees on the number of classes .*re-export'):
        validate_script.main(['--model', f'local-dir:{tmp_path}', '--data-dir', 'unused'])


# --- 3. one run folder has one writer; a writer killed with kill -9 leaves no stale lock ---------------------------

def test_a_second_writer_of_a_run_folder_is_refused_naming_the_holder(straight, tmp_path):
    run_dir = tmp_path / 'run'
    shutil.copytree(straight[0], run_dir)
    before = os.stat(run_dir / 'last.pth.tar').st_mtime_ns, (run_dir / 'summary.csv').read_text()
    with lock_run_dir(str(run_dir)):
        with pytest.raises(ValueError, match=f'{run_dir} is in use by pid {os.getpid()} on {socket.gethostname()} '
                                             f'since .*wait for that run to end'):
            _resume(run_dir)
    assert (os.stat(run_dir / 'last.pth.tar').st_mtime_ns, (run_dir / 'summary.csv').read_text()) == before


def test_the_lock_of_a_writer_killed_with_sigkill_is_taken_over(tmp_path):
    holder = subprocess.run(
        [sys.executable, '-c', 'import os, signal, sys; from rsg_timm.run_folder import lock_run_dir\n'
                               'with lock_run_dir(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)',
         str(tmp_path)], env=dict(os.environ, PYTHONPATH=REPO_DIR), capture_output=True, text=True)
    assert holder.returncode == -signal.SIGKILL, holder.stderr
    assert (tmp_path / LOCK_FILE).read_text().startswith('pid ')  # left behind, as after a real kill -9
    with lock_run_dir(str(tmp_path)):
        assert (tmp_path / LOCK_FILE).read_text().startswith(f'pid {os.getpid()} ')


# --- 4. symbolic links in an ImageFolder tree never train an image twice or under another class --------------------

def _image_tree(root, layout):
    for relative in layout:
        os.makedirs(os.path.dirname(root / relative), exist_ok=True)
        (root / relative).write_bytes(b'not empty')
    return root


def test_a_folder_tree_lists_its_images_as_imagefolder_does(tmp_path):
    train = _image_tree(tmp_path / 'train', ['b/1.png', 'a/2.jpg', 'a/sub/1.png', 'a/sub b/3.png', 'a/1.png',
                                             'a/notes.txt', 'c/x/y/4.png'])
    os.makedirs(tmp_path / 'outside')
    (tmp_path / 'outside' / '5.png').write_bytes(b'not empty')
    os.symlink(tmp_path / 'outside', train / 'b' / 'linked')  # a linked folder reached once is fine
    classes, class_to_idx = find_classes(str(train))
    expected = make_dataset(str(train), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    assert create_lt_dataset('folder_lt', str(tmp_path), split='train').samples == expected


@pytest.mark.parametrize('link,target,match', [
    ('a/loop', '..', r'train/a/loop leads to .*train again \(a symbolic link loop'),
    ('a/self', '.', r'train/a/self leads to .*train/a again'),
    ('a/other', '../b', r'train/b leads to .*train/a/other again'),
    ('b/2.png', '../a/1.png', r'train/b/2.png and .*train/a/1.png are one image file'),
])
def test_symbolic_link_loops_and_duplicates_in_a_folder_tree_are_refused(link, target, match, tmp_path):
    train = _image_tree(tmp_path / 'train', ['a/1.png', 'b/1.png'])
    os.symlink(target, train / link)
    with pytest.raises(ValueError, match=match):
        create_lt_dataset('folder_lt', str(tmp_path), split='train')


# --- 8. checkpoints record the package version; a resume lists what resolves differently from the run ------------

def test_a_resume_lists_the_recipe_changes_an_older_checkpoint_would_take_silently(straight, tmp_path, caplog):
    run_dir = tmp_path / 'run'
    shutil.copytree(straight[0], run_dir)
    last = run_dir / 'last.pth.tar'
    checkpoint = load_training_checkpoint(str(last))
    assert checkpoint['rsg_timm_version'] == rsg_timm.__version__
    with caplog.at_level('WARNING', logger='train'):
        _resume_end(run_dir)
    assert 'resumed recipe differs' not in caplog.text
    # as an older version wrote it: no version, a flag it predates, a warm-up this version resolves differently
    del checkpoint['rsg_timm_version']
    checkpoint['args'].warmup_epochs = 4  # this version shortens a warm-up as long as the run (2 epochs) to 0
    del checkpoint['args'].dp_replicas
    torch.save(checkpoint, last)
    caplog.clear()
    with caplog.at_level('WARNING', logger='train'):
        _resume_end(run_dir)
    assert (f'{last} was written by an unrecorded version, this is rsg_timm {rsg_timm.__version__}; the resumed '
            f'recipe differs in: --dp-replicas 1 (the run predates the flag), --warmup-epochs 0 (the run had 4)'
            in caplog.text)


# --- 9 and 11. bad flags and files end in one error: line before any work; settings that never act are warned -----

def _cli_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: train_script.main(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and lines[-1].startswith('error: '), lines
    return lines[-1]


@pytest.mark.parametrize('flags,config,match', [
    (['--epochs', '0'], None, '--epochs 0: a run trains at least one epoch'),
    (['--epochs', '-1'], None, '--epochs -1: a run trains at least one epoch'),
    (['--checkpoint-hist', '0'], None, '--checkpoint-hist 0: .* at least 1'),
    ([], 'lr: [0.1\n', 'cfg.yaml: cannot read it as YAML .*fix the file'),
    ([], '- 0.1\n', 'cfg.yaml: holds a list, not a mapping'),
    ([], b'\xff\xfe\x00lr', 'cfg.yaml: cannot read it as YAML'),
    (['--output', '{tmp}/cfg.yaml'], 'lr: 0.1\n', r'--output .*cfg.yaml is a file; pass a folder'),
    (['--output', '{tmp}/cfg.yaml/runs'], 'lr: 0.1\n', r'cannot create the run folder .*cfg.yaml/runs/x \(Not a '
                                                       r'directory\): pass an --output you can write to'),
])
def test_bad_flags_and_config_files_end_in_one_error_line(flags, config, match, tiny_demo, tmp_path, capsys):
    argv = ['--data-dir', tiny_demo, '--experiment', 'x', *QUIET, *(f.format(tmp=tmp_path) for f in flags)]
    if config is not None:
        path = tmp_path / 'cfg.yaml'
        path.write_bytes(config if isinstance(config, bytes) else config.encode())
        if '--output' not in flags:
            argv += ['--config', str(path)]
    assert re.search(match, _cli_error(capsys, argv))


def test_a_full_disk_during_the_export_is_one_error_line_and_resume_completes_it(straight, tmp_path, monkeypatch,
                                                                                  capsys):
    run_dir = tmp_path / 'run'
    shutil.copytree(straight[0], run_dir)
    for name in ('model.safetensors', 'config.json', 'per_class.csv'):
        os.remove(run_dir / name)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    with monkeypatch.context() as patch:
        patch.setattr(train_script, 'save_pretrained', disk_full)
        line = _cli_error(capsys, ['--resume', str(run_dir), *QUIET])
    assert re.search(f'could not write the export into {run_dir} \\(No space left on device; .* MB free\\): the '
                     f'training is saved; free space, then --resume {run_dir} completes the export', line)
    _resume(run_dir)
    _assert_same_run(run_dir, straight[0])


# --- 9 and 10. a truncated or foreign npz is named as such, not as pickled data ----------------------------------

def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _member_corrupt(path):  # the zip directory intact, an array's bytes damaged
    data = bytearray(path.read_bytes())
    start = data.index(b'\x93NUMPY', data.index(b'labels.npy'))
    data[start:start + 6] = b'garbag'
    path.write_bytes(bytes(data))


@pytest.mark.parametrize('spoil,match', [
    (lambda p: p.write_text('images,labels\n1,2\n'), 'not an npz file .*truncated or of another format'),
    (_truncated, 'not an npz file .*truncated or of another format'),
    (_member_corrupt, 'its arrays cannot be read .*truncated or corrupt'),
    (lambda p: np.save(open(p, 'wb'), np.zeros(3)), r'holds a single array \(.npy\)'),
    (lambda p: np.savez(p, images=np.zeros((1, 32, 32, 3), np.uint8), labels=np.array([{}], dtype=object)),
     'holds Python object arrays'),
])
def test_a_bad_npz_names_the_file_and_what_is_wrong(spoil, match, tmp_path):
    path = tmp_path / 'cifar10_train.npz'
    np.savez(path, images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.arange(4))
    spoil(path)
    with pytest.raises(ValueError, match=f'cifar10_train.npz: {match}') as info:
        create_lt_dataset('cifar10_lt', str(tmp_path), split='train')
    assert 'allow_pickle' not in str(info.value)


# --- 10. a run that died before its first checkpoint is started again in its folder -----------------------------

def test_a_run_that_died_before_its_first_checkpoint_starts_again_in_its_folder(tiny_demo, tmp_path, monkeypatch,
                                                                               straight, capsys):
    run_dir = tmp_path / 'run'
    with monkeypatch.context() as patch:
        _KillSwitch(patch, run_dir, kill_at=straight[1].index('torch.save tmp.pth.tar'))
        with pytest.raises(_Killed):
            _train(tiny_demo, tmp_path, 'run')
    assert (run_dir / 'summary.csv').is_file() and not list(run_dir.glob('*.pth.tar'))
    assert 'the same --output and --experiment reuse the folder' in _cli_error(capsys, ['--resume', str(run_dir)])
    _train(tiny_demo, tmp_path, 'run')
    _assert_same_run(run_dir, straight[0])
    with open(run_dir / 'summary.csv') as f:
        assert [line.split(',')[0] for line in f.read().splitlines()[1:]] == ['0', '1']
    with pytest.raises(ValueError, match='already exists'):  # a run with checkpoints is never overwritten
        _train(tiny_demo, tmp_path, 'run')


@pytest.mark.parametrize('seed', [0, 1])
def test_random_bytes_as_a_checkpoint_are_called_corrupt_not_code(seed, tmp_path):
    path = tmp_path / 'noise.pth.tar'
    path.write_bytes(np.random.default_rng(seed).bytes(5000))
    with pytest.raises(CheckpointError, match='noise.pth.tar.* is corrupt or not a PyTorch checkpoint') as info:
        load_training_checkpoint(str(path))
    assert 'run code' not in str(info.value)


# --- 10 and 11. an empty class folder is named: an error in the training split, a warning in an evaluation one ----

def test_an_empty_class_folder_is_named(tmp_path, caplog):
    _image_tree(tmp_path, ['train/a/1.png', 'train/c/1.png', 'val/a/1.png', 'val/b/1.png'])
    os.makedirs(tmp_path / 'train' / 'b')
    os.makedirs(tmp_path / 'val' / 'c')
    with pytest.raises(ValueError, match=r'1 class folders hold no training images \(first: .*train/b\)'):
        create_lt_dataset('folder_lt', str(tmp_path), split='train')
    (tmp_path / 'train' / 'b' / '1.png').write_bytes(b'not empty')
    with caplog.at_level('WARNING', logger='rsg_timm.data.list_lt'):
        create_lt_dataset('folder_lt', str(tmp_path), split='val')
    assert re.search(r'val: no images of 1 classes \(c\); their accuracy is not measured', caplog.text)


def _profile_warning(flags, caplog):
    args = train_script._parse_args(flags)
    args.imb_type = args.imb_type or train_script.default_imb_type(args.dataset)  # as train.py resolves it
    caplog.clear()
    with caplog.at_level('WARNING', logger='train'):
        train_script._warn_unused_profile(args)
    return caplog.text


@pytest.mark.parametrize('flags,warning', [
    (['--imb-factor', '0.1'], r'--imb-factor 0.1: no effect, --dataset demo is used with its fixed class profile'),
    (['--imb-type', 'exp', '--imb-select', 'shuffle'], r'--imb-type exp, --imb-select shuffle: no effect, --dataset '
                                                       r'demo'),
    (['--dataset', 'folder_lt', '--imb-factor', '0.1'], r'--imb-factor 0.1: no effect, --dataset folder_lt is used '
                                                        r'as it is \(--imb-type none\)'),
])
def test_class_profile_flags_that_shape_nothing_are_warned(flags, warning, caplog):
    assert re.search(warning, _profile_warning(flags, caplog))


@pytest.mark.parametrize('flags', [[], ['--dataset', 'cifar10_lt', '--imb-factor', '0.1'],
                                   ['--dataset', 'folder_lt', '--imb-type', 'exp', '--imb-factor', '0.1']])
def test_class_profile_flags_that_act_or_are_defaults_are_not_warned(flags, caplog):
    assert 'no effect' not in _profile_warning(flags, caplog)


# --- 9. output paths that would fail only after the work are refused first ------------------------------------------

@pytest.mark.parametrize('flags,match', [
    (['--results-file', '{tmp}/missing/results.csv'], r'--results-file .*missing/results.csv: its folder .*missing '
                                                       r'does not exist; create the folder'),
    (['--results-file', '{tmp}/r.csv', '--confusion-file', '{tmp}/no/c.csv'], '--confusion-file .*no/c.csv: its '
                                                                              'folder'),
    (['--results-file', '{tmp}'], r'--results-file .*: .* is a folder'),
])
def test_validate_refuses_unwritable_output_files_before_evaluating(flags, match, tmp_path, monkeypatch):
    monkeypatch.setattr(validate_script, 'create_eval_model', lambda *args, **kwargs: pytest.fail('evaluated'))
    with pytest.raises(ValueError, match=match):
        validate_script.main(['--model', 'cifar_resnet20', *(f.format(tmp=tmp_path) for f in flags)])


def test_a_dry_run_into_a_file_is_refused(straight, tmp_path):
    (tmp_path / 'file').write_text('keep')
    with pytest.raises(ValueError, match='--dry-run .*file is a file: pass a new or empty folder'):
        hub.push_to_hub(straight[0], 'me/model', dry_run_dir=tmp_path / 'file')
    assert (tmp_path / 'file').read_text() == 'keep'


# --- 10. an image unreadable mid-run is to be replaced: removing it would make the run unresumable -----------------

def test_an_unreadable_image_mid_run_advises_what_keeps_the_run_resumable(tmp_path):
    _image_tree(tmp_path, ['train/a/1.png', 'train/b/1.png'])
    dataset = create_lt_dataset('folder_lt', str(tmp_path), split='train')
    with pytest.raises(ValueError, match=r'a/1.png: cannot read the image .*replace it with a readable copy, then '
                                         r'--resume \(removing it changes the class counts') as info:
        dataset[0]
    assert 'remove it from the data' not in str(info.value)


# --- 9. a push without network or login is one error: line ---------------------------------------------------------

def test_a_push_without_network_is_one_line_naming_the_fix(straight, monkeypatch):
    # the suite runs with HF_HUB_OFFLINE=1, so huggingface_hub refuses the request as it would without network
    with pytest.raises(ConnectionError, match=r'cannot reach the Hub at .* to push me/model .*--dry-run OUT_DIR'):
        hub.push_to_hub(straight[0], 'me/model', token='x')
    refused = httpx.ConnectError('[Errno 111] Connection refused')  # the HTTP client's own error
    monkeypatch.setattr(hub.HfApi, 'create_repo', lambda *args, **kwargs: (_ for _ in ()).throw(refused))
    with pytest.raises(ConnectionError, match=r'cannot reach the Hub .*Connection refused\); check the network'):
        hub.push_to_hub(straight[0], 'me/model', token='x')


# --- 10. a non-finite or diverged loss names the setting that explains it, not the learning rate ------------------

@pytest.mark.parametrize('flags,cause', [
    (['-b', '1'], r'-b 1 puts one image in a batch .*use -b 2 or more'),
    (['-b', '3', '--dp-replicas', '2'], r'-b 3 puts one image in a batch \(per --dp-replicas share\).*use -b 4'),
    (['--amp', '--amp-dtype', 'float16', '--device', 'cpu'], r'--amp-dtype float16 on the CPU.*bfloat16'),
    ([], r'a learning rate too high'),
])
def test_the_divergence_hint_names_the_likely_cause(flags, cause):
    args = train_script._parse_args(['--model', 'cifar_resnet20', *flags])
    resolve_recipe(args)
    assert re.search(cause, train_script._divergence_hint(args))


def test_a_non_finite_loss_with_one_image_batches_blames_the_batch(tiny_demo, tmp_path, monkeypatch):
    hints = []

    def first_step_non_finite(model, loader, criterion, *args, non_finite_hint=None, **kwargs):
        hints.append(non_finite_hint)
        criterion.register_forward_hook(lambda module, inputs, loss: loss * float('inf'))
        return train_one_epoch(model, [next(iter(loader))], criterion, *args, non_finite_hint=non_finite_hint,
                               **kwargs)
    monkeypatch.setattr(train_script, 'train_one_epoch', first_step_non_finite)
    with pytest.raises(NonFiniteLossError, match=r'epoch 0, step 0 .*-b 1 puts one image in a batch'):
        _train(tiny_demo, tmp_path, 'run', '-b', '1')
    assert len(hints) == 1


# --- 9. a corrupt tags.json names itself -------------------------------------------------------------------------

@pytest.mark.parametrize('text,match', [('{"cifar_resnet32.a": {', 'is not valid JSON'),
                                        ('["cifar_resnet32.a"]', 'must map <arch>.<tag> to an entry object')])
def test_a_corrupt_zoo_table_names_its_file(text, match, tmp_path):
    (tmp_path / 'tags.json').write_text(text)
    with pytest.raises(ValueError, match=f'{tmp_path}/tags.json {match}.*restore it'):
        load_pretrained_tags(tmp_path)
