"""Fault injection: no run destroys another's results, --resume continues the run it names, and bad input fails
at once with a message that names the file and the fix (issue 15)."""
import csv
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from timm.utils import CheckpointSaver

from rsg_timm import RSG, hub
from rsg_timm.checkpoint import CheckpointError, RunCheckpointSaver, find_resume_checkpoint, load_training_checkpoint
from rsg_timm.data import create_lt_dataset
from rsg_timm.eval_model import create_eval_model
from rsg_timm.zoo_authoring import add_pretrained
from rsg_timm.resume import restore_flags
from rsg_timm.train_flags import restored_on_resume

from helpers import load_script

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


def test_resume_into_another_model_is_refused_before_any_work(finished_run):
    last = os.path.join(finished_run, 'last.pth.tar')
    before = os.stat(last).st_mtime_ns
    with pytest.raises(CheckpointError, match='last.pth.tar does not fit rsg_resnet32: .*missing keys'):
        train_script.main(['--resume', finished_run, '--model', 'rsg_resnet32', *QUIET])
    assert os.stat(last).st_mtime_ns == before and _summary_epochs(finished_run) == ['0', '1']


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
    (dict(num_classes=-1), 'num_classes'),
    (dict(feature_maps_shape=(8, 0, 4)), r'feature_maps_shape\[1\]'),
    (dict(epoch_thresh=1.5), 'epoch_thresh'),
])
def test_rsg_constructor_rejects_what_would_fail_at_generation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RSG(**dict(dict(feature_maps_shape=(8, 4, 4), num_classes=6), **kwargs))


@pytest.mark.parametrize('flags,match', [
    (('--rsg-n-center', '0'), 'rsg-n-center'),
    (('--rsg-strength', '2'), r'--rsg-strength\) must lie in \(0, 1\], got 2\.0'),
])
def test_bad_rsg_flag_fails_when_the_model_is_built(flags, match, tiny_demo, tmp_path):
    with pytest.raises(ValueError, match=match):
        _run(tiny_demo, tmp_path, '--experiment', 'bad', *flags)
    assert not (tmp_path / 'bad' / 'summary.csv').exists()  # refused before any training


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


# --- 6. CIFAR-style npz files are checked when they are read ------------------------------------------------------

def _write_cifar_npz(folder, split, images=None, labels=None, **arrays):
    labels = np.arange(20) % 10 if labels is None else labels
    images = np.zeros((len(labels), 32, 32, 3), np.uint8) if images is None else images
    np.savez(folder / f'cifar10_{split}.npz', images=images, labels=labels, **arrays)


@pytest.mark.parametrize('split,images,labels,match', [
    ('train', None, np.array([0, 1, 10, 3]), r'1 labels outside \[0, 10\) \(first: 10 at index 2\)'),
    ('test', None, np.array([0, -1, 2, 3]), r'labels outside \[0, 10\)'),
    ('train', np.zeros((3, 32, 32, 3), np.uint8), np.arange(4), '3 images but labels of shape'),
    ('train', np.zeros((4, 32, 32, 1), np.uint8), np.arange(4), r'uint8 \[N, 32, 32, 3\]'),
    ('test', np.zeros((4, 28, 28, 3), np.uint8), np.arange(4), r'got uint8 \[4, 28, 28, 3\]'),
    ('train', None, np.array([0., 1.5, 2., 3.]), 'integers'),
])
def test_cifar_npz_is_checked_at_load_time(split, images, labels, match, tmp_path):
    _write_cifar_npz(tmp_path, split, images, labels)
    with pytest.raises(ValueError, match=f'cifar10_{split}.npz: .*{match}'):
        create_lt_dataset('cifar10_lt', str(tmp_path), split=split)


def test_cifar_npz_needs_only_images_and_labels(tmp_path):
    _write_cifar_npz(tmp_path, 'test')  # no classes array, as the README describes the layout
    assert create_lt_dataset('cifar10_lt', str(tmp_path), split='test').classes == [str(i) for i in range(10)]
    np.savez(tmp_path / 'cifar10_train.npz', images=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"cifar10_train.npz: no \['labels'\] array \(it holds \['images'\]\)"):
        create_lt_dataset('cifar10_lt', str(tmp_path), split='train')


# --- 7. a user's folder is used as it is unless a profile is asked for ---------------------------------------------

def _train_on_folder(tmp_path, counts, *extra):
    for split, per_class in (('train', counts), ('val', [2] * len(counts))):
        for c, n in enumerate(per_class):
            os.makedirs(tmp_path / 'data' / split / f'class{c}', exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((32, 32, 3), 40 * c, np.uint8)).save(tmp_path / 'data' / split / f'class{c}'
                                                                              / f'{i}.png')
    return train_script.main(['--dataset', 'folder_lt', '--data-dir', str(tmp_path / 'data'), '--output',
                              str(tmp_path / 'runs'), '--model', 'cifar_resnet20', '--loss', 'ce', '--reweight',
                              'none', '--epochs', '1', '-b', '8', '-j', '0', *QUIET, *extra])


def test_folder_lt_trains_on_the_folder_as_it_is(tmp_path):
    result = _train_on_folder(tmp_path, [5, 4, 3, 2], '--check-data')
    assert load_training_checkpoint(os.path.join(result['output_dir'], 'last.pth.tar'))['class_counts'] == [5, 4, 3, 2]
    with open(os.path.join(result['output_dir'], 'args.yaml')) as f:
        assert 'imb_type: none' in f.read()


# --- 9 and 11. unreadable checkpoints and exports are named, a pickle with code is refused plainly -----------------

class _RunsCode:
    def __reduce__(self):
        return os.system, ('echo never',)


def test_an_empty_or_malicious_checkpoint_is_named(tmp_path):
    (tmp_path / 'empty.pth.tar').write_bytes(b'')
    with pytest.raises(CheckpointError, match='empty.pth.tar.*empty \\(0 bytes\\)'):
        load_training_checkpoint(str(tmp_path / 'empty.pth.tar'))
    torch.save({'state_dict': _RunsCode()}, tmp_path / 'evil.pth.tar')
    with pytest.raises(CheckpointError, match='evil.pth.tar.*was NOT loaded.*run code') as info:
        load_training_checkpoint(str(tmp_path / 'evil.pth.tar'))
    assert 'weights_only' not in str(info.value)  # torch's advice to switch the check off is not repeated


def test_a_broken_export_names_its_file(finished_run, tmp_path):
    export = tmp_path / 'export'
    os.makedirs(export)
    for name in ('model.safetensors', 'config.json'):
        with open(os.path.join(finished_run, name), 'rb') as src:
            (export / name).write_bytes(src.read())
    config = (export / 'config.json').read_text()
    (export / 'config.json').write_text(config[:len(config) // 2])
    with pytest.raises(CheckpointError, match='config.json.* is not valid JSON'):
        create_eval_model(f'local-dir:{export}')
    other = json.loads(config)
    other['architecture'] = 'resnet18'
    (export / 'config.json').write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match='does not fit resnet18|as the resnet18'):
        create_eval_model(f'local-dir:{export}')
    (export / 'config.json').write_text(config)
    (export / 'model.safetensors').write_bytes(b'garbage' * 10)
    with pytest.raises(CheckpointError, match='model.safetensors does not load'):
        create_eval_model(f'local-dir:{export}')


# --- 2 and 12. the Hub tools refuse up front what would overwrite files or fail later ----------------------------

def test_dry_run_refuses_a_folder_with_files_and_lists_what_a_push_uploads(finished_run, tmp_path, caplog):
    other = tmp_path / 'other_run'
    os.makedirs(other)
    (other / 'args.yaml').write_text('keep: me\n')
    with pytest.raises(ValueError, match='not empty'):
        hub.push_to_hub(finished_run, 'me/model', dry_run_dir=other)
    assert (other / 'args.yaml').read_text() == 'keep: me\n' and os.listdir(other) == ['args.yaml']
    with caplog.at_level('INFO', logger='rsg_timm.hub'):
        out = hub.push_to_hub(finished_run, 'me/model', dry_run_dir=tmp_path / 'staged')
    for name in os.listdir(out):
        assert f'{name} (' in caplog.text


@pytest.mark.parametrize('repo_id', ['me/bad name', 'me/a..b', 'me/-x', 'me/' + 'x' * 100])
def test_dry_run_refuses_repo_ids_the_hub_rejects(repo_id, finished_run, tmp_path):
    with pytest.raises(ValueError):
        hub.push_to_hub(finished_run, repo_id, dry_run_dir=tmp_path / 'staged')
    assert not os.path.exists(tmp_path / 'staged')


def test_add_pretrained_refuses_a_pickle_named_safetensors_and_a_bad_hub_id(finished_run, tmp_path, monkeypatch):
    export = tmp_path / 'export'
    os.makedirs(export)
    with open(os.path.join(finished_run, 'config.json'), 'rb') as f:
        (export / 'config.json').write_bytes(f.read())
    torch.save({'weight': torch.zeros(2)}, export / 'model.safetensors')
    zoo = tmp_path / 'zoo'
    with pytest.raises(ValueError, match='model.safetensors is not a safetensors file'):
        add_pretrained(export, 'test_tag', pretrained_dir=zoo)
    assert not zoo.exists()  # refused before anything was written
    added = []
    monkeypatch.setattr(hub, 'add_pretrained', lambda *args, **kwargs: added.append(args) or ('x', {}))
    with pytest.raises(ValueError):
        hub.main(['add-pretrained', finished_run, '--tag', 'test_tag', '--hf-hub-id', 'me/a..b'])
    assert not added


# --- 8. image files: missing or empty ones fail when the dataset is built, unreadable ones name themselves --------

def _image_list_root(tmp_path):
    os.makedirs(tmp_path / 'img')
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(tmp_path / 'img' / f'{i}.png')
    (tmp_path / 'ImageNet_LT_train.txt').write_text(''.join(f'img/{i}.png {i % 2}\n' for i in range(4)))
    return tmp_path


def test_a_missing_or_empty_list_image_fails_when_the_dataset_is_built(tmp_path):
    root = _image_list_root(tmp_path)
    os.remove(root / 'img' / '1.png')
    (root / 'img' / '2.png').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r"ImageNet_LT_train.txt: 1 image files are missing and 1 are empty "
                                                r"\(first missing '.*img/1.png', empty '.*img/2.png'\)"):
        create_lt_dataset('imagenet_lt', str(root), split='train')


def test_a_truncated_image_names_its_file(tmp_path):
    root = _image_list_root(tmp_path)
    data = (root / 'img' / '3.png').read_bytes()
    (root / 'img' / '3.png').write_bytes(data[:len(data) // 2])
    dataset = create_lt_dataset('imagenet_lt', str(root), split='train')
    with pytest.raises(ValueError, match=r'img/3.png: cannot read the image'):
        dataset[3]
    with pytest.raises(ValueError, match=r'1 of 4 images cannot be read: .*img/3.png'):
        dataset.check_images()


def test_check_data_reads_every_image_before_training(tmp_path):
    _train_on_folder(tmp_path, [3, 2])
    bad = tmp_path / 'data' / 'val' / 'class1' / '1.png'
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(ValueError, match='1 of 4 images cannot be read: .*val/class1/1.png'):
        _train_on_folder(tmp_path, [], '--check-data')


def test_resume_takes_the_recipe_but_not_how_the_run_was_started_or_run():
    args = train_script._parse_args(['--resume', 'RUN', '--lr', '0.3'])
    saved = train_script._parse_args(['--lr', '0.05', '--epochs', '4', '--fork', 'OTHER/last.pth.tar', '--device',
                                      'cuda:3', '--output', 'elsewhere', '-j', '8'])
    restore_flags(args, saved, train_script._given_names(['--resume', 'RUN', '--lr', '0.3']), restored_on_resume(),
                  'RUN')
    assert (args.epochs, args.lr) == (4, 0.3)  # the run's recipe, except what is given now
    assert (args.output, args.workers, args.resume) == ('', 2, 'RUN')
    assert args.fork == 'OTHER/last.pth.tar'  # where the run branched off stays in its args.yaml and on its card
    assert args.device != 'cuda:3'


def test_summary_rows_stay_under_their_columns_when_a_resumed_run_reports_more(tmp_path):
    """A run resumed by a newer version may report a new column (eval_logit_scale): the file is widened once and
    every value stays under its own header."""
    import pandas as pd

    from rsg_timm.run_folder import append_summary

    path = str(tmp_path / 'summary.csv')
    append_summary(path, 0, {'ce': 2.0}, {'loss': 60.0, 'top1': 10.0}, lr=0.1)
    append_summary(path, 1, {'ce': 1.5}, {'loss': 1.9, 'top1': 20.0, 'logit_scale': 30.0}, lr=0.1)
    append_summary(path, 2, {'ce': 1.2}, {'loss': 1.7, 'top1': 30.0, 'logit_scale': 30.0}, lr=0.01)
    summary = pd.read_csv(path)
    assert list(summary.columns) == ['epoch', 'train_ce', 'eval_loss', 'eval_top1', 'lr', 'eval_logit_scale']
    assert summary['eval_top1'].tolist() == [10.0, 20.0, 30.0] and summary['lr'].tolist() == [0.1, 0.1, 0.01]
    assert summary['eval_logit_scale'].isna().tolist() == [True, False, False]
