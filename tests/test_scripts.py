"""train.py and validate.py end to end on a tiny long-tailed set: outputs, resume, export, DDP, AMP, bad input."""
import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import yaml

from rsg_timm.checkpoint import CheckpointError, load_training_checkpoint
from rsg_timm.cli import run_cli
from rsg_timm.engine import NonFiniteLossError, train_one_epoch
from rsg_timm.losses import effective_number_weights

from helpers import REPO_DIR, TINY_COUNTS, load_script, train_args

REPO = REPO_DIR
COUNTS = TINY_COUNTS
train_script = load_script('train.py')
validate_script = load_script('validate.py')


def _summary(run_dir):
    with open(os.path.join(run_dir, 'summary.csv')) as f:
        return list(csv.DictReader(f))


def test_train_writes_the_run_folder(trained_run):
    run_dir, result = str(trained_run.dir), trained_run.result
    for name in ('args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar', 'model.safetensors',
                 'config.json', 'per_class.csv'):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    rows = _summary(run_dir)
    assert [r['epoch'] for r in rows] == ['0', '1']
    for key in ('train_ce', 'train_cesc', 'train_mv', 'train_top1', 'eval_top1', 'eval_many', 'eval_medium',
                'eval_few', 'eval_ece', 'lr'):
        assert key in rows[0], key
    assert float(rows[0]['train_mv']) == 0 and float(rows[0]['train_generated']) == 0  # CESC phase
    assert float(rows[1]['train_mv']) > 0 and float(rows[1]['train_generated']) > 0  # generation phase
    assert result['top1'] == pytest.approx(float(rows[1]['eval_top1']))
    # LDAM's cosine head: loss and ECE on the logits x s its loss saw, labelled; the export records s for plain timm
    assert [r['eval_logit_scale'] for r in rows] == ['30.0', '30.0'] and result['logit_scale'] == 30.0
    with open(os.path.join(run_dir, 'config.json')) as f:
        assert json.load(f)['logit_scale'] == 30.0
    checkpoint = load_training_checkpoint(os.path.join(run_dir, 'last.pth.tar'))
    assert checkpoint['class_counts'] == COUNTS and checkpoint['backbone'] == 'cifar_resnet32'
    assert any(k.startswith('rsg.') for k in checkpoint['state_dict'])
    with open(os.path.join(run_dir, 'per_class.csv')) as f:
        assert len(f.readlines()) == 11


def test_epoch_switches_reach_training(trained_run):
    """DRW's class weights arrive at drw_epoch and RSG generates samples after its threshold, in a real run."""
    with open(trained_run.dir / 'args.yaml') as f:
        args = yaml.safe_load(f)
    assert args['drw_epoch'] == 1 and args['rsg_epoch_thresh'] == 0
    cesc_epoch, drw_epoch = trained_run.class_weights
    assert cesc_epoch and all(w is None for w in cesc_epoch)  # before drw_epoch: unweighted
    expected = effective_number_weights(COUNTS, args['cb_beta'])
    assert drw_epoch and all(w is not None for w in drw_epoch), 'no class weights from drw_epoch on'
    assert not torch.allclose(expected, torch.ones_like(expected))
    for weight in drw_epoch:
        torch.testing.assert_close(weight.cpu(), expected)
    generated = [float(r['train_generated']) for r in _summary(trained_run.dir)]
    assert generated[0] == 0 and generated[1] > 0  # samples appear after rsg_epoch_thresh


def test_args_yaml_round_trips_as_config(trained_run):
    run_dir = str(trained_run.dir)
    args = train_script._parse_args(['--config', os.path.join(run_dir, 'args.yaml')])
    assert args.rsg_epoch_thresh == 0 and args.batch_size == 32 and args.model == 'rsg_resnet32'


def test_export_loads_as_plain_backbone(trained_run, tiny_demo):
    run_dir = str(trained_run.dir)
    exported = timm.create_model(f'local-dir:{run_dir}', pretrained=True).eval()
    assert type(exported).__name__ == 'CifarResNet'
    model = timm.create_model('rsg_resnet32', num_classes=10, use_norm=True)
    model.load_state_dict(load_training_checkpoint(os.path.join(run_dir, 'last.pth.tar'))['state_dict'])
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(exported(x), model.eval()(x), rtol=0, atol=0)


def test_validate_checkpoint_export_and_posthoc(trained_run, tiny_demo, tmp_path):
    run_dir, result = str(trained_run.dir), trained_run.result
    common = ['--data-dir', tiny_demo, '-b', '16']
    by_rsg = validate_script.main(['--model', 'rsg_resnet32', '--checkpoint',
                                   os.path.join(run_dir, 'last.pth.tar'), *common,
                                   '--results-file', str(tmp_path / 'r.csv')])
    by_backbone = validate_script.main(['--model', 'cifar_resnet32', '--checkpoint',
                                        os.path.join(run_dir, 'last.pth.tar'), *common])
    exported = validate_script.main(['--model', f'local-dir:{run_dir}', *common,
                                     '--results-file', str(tmp_path / 'r.json'), '--results-format', 'json'])
    for r in (by_backbone, exported):
        for key in ('top1', 'top5', 'many', 'medium', 'few', 'ece'):
            assert r[key] == pytest.approx(by_rsg[key], nan_ok=True), key
    assert by_rsg['top1'] == pytest.approx(result['top1'])
    assert by_rsg['loss'] == pytest.approx(result['loss'], abs=1e-3) and by_rsg['logit_scale'] == 30.0
    bare = tmp_path / 'bare'  # an export without its run records: the scale comes from config.json
    bare.mkdir()
    for name in ('config.json', 'model.safetensors'):
        shutil.copyfile(os.path.join(run_dir, name), bare / name)
    from_config = validate_script.main(['--model', f'local-dir:{bare}', '--dataset', 'demo', *common])
    assert from_config['logit_scale'] == 30.0 and from_config['ece'] == pytest.approx(by_rsg['ece'])
    assert by_rsg['param_count'] < 0.5  # the backbone alone was evaluated (ResNet-32: 0.46 M)
    assert (tmp_path / 'r.csv').read_text().startswith('model,checkpoint,top1')
    assert (tmp_path / 'r_per_class.csv').is_file() and (tmp_path / 'r_confusion.csv').is_file()
    assert yaml.safe_load((tmp_path / 'r.json').read_text())['top1'] == pytest.approx(exported['top1'])
    adjusted = validate_script.main(['--model', f'local-dir:{run_dir}', *common, '--logit-adjust', '2.0'])
    assert adjusted['logit_adjust'] == 2.0
    with pytest.raises(ValueError, match='cosine'):
        validate_script.main(['--model', f'local-dir:{run_dir}', *common, '--tau-norm', '1.0'])


def test_resume_gives_the_same_weights(tiny_demo, tmp_path):
    # The schedule is pinned so that stopping after epoch 0 changes nothing else.
    pinned = ['--model', 'rsg_resnet20', '--rsg-epoch-thresh', '0', '--decay-milestones', '5', '6', '--drw-epoch', '1']
    train_script.main(train_args(tiny_demo, tmp_path, 'straight', *pinned))
    train_script.main(train_args(tiny_demo, tmp_path, 'resumed', *pinned, '--epochs', '1'))
    train_script.main(train_args(tiny_demo, tmp_path, 'resumed', *pinned, '--resume',
                                  str(tmp_path / 'resumed' / 'last.pth.tar')))
    straight = load_training_checkpoint(str(tmp_path / 'straight' / 'last.pth.tar'))
    resumed = load_training_checkpoint(str(tmp_path / 'resumed' / 'last.pth.tar'))
    assert straight['epoch'] == resumed['epoch'] == 1
    for k, v in straight['state_dict'].items():
        assert torch.equal(v, resumed['state_dict'][k]), k
    assert len(_summary(str(tmp_path / 'resumed'))) == 2
    with pytest.raises(ValueError, match=r'run finished \(epochs 0-1 trained of 2\), so there is nothing to resume'):
        train_script.main(['--resume', str(tmp_path / 'resumed'), '--no-progress'])  # not a silent exit


def test_ctrl_c_prints_one_line_with_the_resume_command(tiny_demo, tmp_path, monkeypatch, capsys):
    def interrupted_after_epoch_0(*args, epoch, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        return train_one_epoch(*args, epoch=epoch, **kwargs)

    monkeypatch.setattr(train_script, 'train_one_epoch', interrupted_after_epoch_0)
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: train_script.main(train_args(tiny_demo, tmp_path, 'run', '--model', 'cifar_resnet20')))
    assert stopped.value.code == 130
    run_dir = tmp_path / 'run'
    err = capsys.readouterr().err  # the log goes to stderr too
    assert err.endswith(f'\ninterrupted: epoch 0 is saved; continue with: python train.py --resume {run_dir}\n')
    assert 'Traceback' not in err
    assert train_script._resume_hint(str(tmp_path)) == f'no epoch of {tmp_path} was saved yet; start the run again'

    def interrupted_before_the_run():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit):
        run_cli(interrupted_before_the_run)  # the hint of the last run does not linger
    assert capsys.readouterr().err == 'interrupted\n'


def test_plain_backbone_amp_channels_last(tiny_demo, tmp_path):
    result = train_script.main(train_args(tiny_demo, tmp_path, 'plain', '--model', 'cifar_resnet20', '--epochs', '1',
                                           '--loss', 'ce', '--reweight', 'none', '--amp', '--channels-last'))
    assert np.isfinite(result['loss'])
    rows = _summary(str(tmp_path / 'plain'))
    assert 'train_cesc' not in rows[0] and float(rows[0]['train_generated']) == 0  # no RSG terms on a plain model


@pytest.mark.parametrize('argv,match', [
    (['--dataset', 'cifar10_lt', '--data-dir', '/nonexistent'], 'data-dir'),
    (['--dataset', 'nope'], 'Unknown dataset'),
    (['--loss', 'nope'], 'Unknown loss'),
    (['--sampler', 'nope'], 'Unknown sampler'),
    (['--reweight', 'nope'], 'nope'),
])
def test_train_bad_input_is_named(argv, match, tiny_demo, tmp_path):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        train_script.main(train_args(tiny_demo, tmp_path, 'bad', *argv))


@pytest.mark.parametrize('argv,match', [
    (['--num-classes', '5'], 'num-classes 5'),
    (['--model', 'cifar_resnet20', '--rsg-strength', '2'], 'rsg_'),
    (['--model', 'nope_net'], 'Unknown model'),
])
def test_train_bad_flags_exit_with_message(argv, match, tiny_demo, tmp_path):
    with pytest.raises(ValueError, match=match):
        train_script.main(train_args(tiny_demo, tmp_path, 'bad', *argv))


def test_validate_rejects_other_architecture_and_corrupt_file(trained_run, tiny_demo, tmp_path):
    run_dir = str(trained_run.dir)
    with pytest.raises(CheckpointError, match='checkpoint of cifar_resnet32'):
        validate_script.main(['--model', 'resnet18', '--checkpoint', os.path.join(run_dir, 'last.pth.tar'),
                              '--data-dir', tiny_demo])
    corrupt = tmp_path / 'corrupt.pth.tar'
    corrupt.write_bytes(open(os.path.join(run_dir, 'last.pth.tar'), 'rb').read()[:1000])
    with pytest.raises(CheckpointError, match='corrupt'):
        validate_script.main(['--model', 'cifar_resnet32', '--checkpoint', str(corrupt), '--data-dir', tiny_demo])
    bare = tmp_path / 'bare.pth'  # a bare state_dict: no architecture recorded, so the keys must tell
    torch.save(load_training_checkpoint(os.path.join(run_dir, 'last.pth.tar'))['state_dict'], bare)
    with pytest.raises(CheckpointError, match='does not fit cifar_resnet20'):
        validate_script.main(['--model', 'cifar_resnet20', '--checkpoint', str(bare), '--data-dir', tiny_demo])


def test_cli_prints_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, 'validate.py'), '--model', 'cifar_resnet32',
                           '--checkpoint', str(tmp_path / 'missing.pth.tar')], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith('error: checkpoint')
    assert 'Traceback' not in proc.stderr


def test_non_finite_loss_stops_before_the_update():
    model = timm.create_model('cifar_resnet20', num_classes=3)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))]
    nan_loss = lambda logits, target: logits.sum() * float('nan')  # noqa: E731
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r'epoch 3, step 0 \(loss=nan, ce=nan\)'):
        train_one_epoch(model, batches, nan_loss, optimizer, epoch=3, device=torch.device('cpu'))
    for k, v in model.named_parameters():  # the weights are untouched (BN statistics move in any forward)
        assert torch.equal(v, before[k]), k


@pytest.mark.skipif(shutil.which('torchrun') is None, reason='torchrun not on PATH')
def test_torchrun_two_processes_on_cpu(tiny_demo, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        ['torchrun', '--standalone', '--nproc-per-node', '2', os.path.join(REPO, 'train.py'),
         *train_args(tiny_demo, tmp_path, 'ddp', '--rsg-epoch-thresh', '0', '--device', 'cpu')],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _summary(str(tmp_path / 'ddp'))
    assert len(rows) == 2 and float(rows[1]['train_generated']) > 0
    assert os.path.isfile(tmp_path / 'ddp' / 'model.safetensors')


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(REPO, 'configs', '*.yaml'))),
                         ids=lambda p: os.path.basename(p))
def test_every_recipe_parses_and_names_a_registered_model(path):
    args = train_script._parse_args(['--config', path])
    assert timm.is_model(args.model), args.model
    assert args.dataset in ('cifar10_lt', 'cifar100_lt', 'imagenet_lt', 'places_lt', 'inat2018', 'folder_lt')


@pytest.mark.slow
def test_torchcompile_through_both_phases(tiny_demo, tmp_path):
    # about a minute and a half on 2 CPU cores, most of it compiling
    result = train_script.main(train_args(tiny_demo, tmp_path, 'compiled', '--rsg-epoch-thresh', '0',
                                           '--torchcompile'))
    rows = _summary(str(tmp_path / 'compiled'))
    assert float(rows[1]['train_generated']) > 0 and np.isfinite(result['loss'])
    state = load_training_checkpoint(str(tmp_path / 'compiled' / 'last.pth.tar'))['state_dict']
    assert not [k for k in state if '_orig_mod' in k]  # compiled in place: the backbone's own keys
