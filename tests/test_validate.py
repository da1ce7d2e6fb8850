"""validate.py: it scores the data the model was trained for (or refuses to guess) and says which, and post-hoc logit
adjustment works on cosine-head (LDAM) models."""
import json
import logging
import math
import os
import re

import pytest
import torch

from rsg_timm.checkpoint import load_training_checkpoint
from rsg_timm.models.pretrained import load_pretrained_tags
from rsg_timm.posthoc import has_nonlinear_classifier, logit_adjust, training_logit_scale

from helpers import REPO_DIR, load_script

train_script = load_script('train.py')
validate_script = load_script('validate.py')
# the shipped LDAM-DRW + RSG tag (cosine head) of CIFAR-10-LT rho=100, whichever schedule it was trained with
ZOO_TAG = min(name for name in load_pretrained_tags() if '.ldam_drw_rsg_cifar10_lt_r100' in name)
SHARED_DATA = os.path.join(os.path.dirname(REPO_DIR), 'shared', 'data')


@pytest.fixture(scope='module')
def demo_run(tiny_demo, tmp_path_factory):
    """One epoch of rsg_resnet20 with the default recipe on the tiny demo set."""
    out = tmp_path_factory.mktemp('runs')
    train_script.main(['--data-dir', tiny_demo, '--output', str(out), '--experiment', 'run', '--model', 'rsg_resnet20',
                       '-b', '32', '--epochs', '1', '--no-progress', '--log-interval', '0'])
    return out / 'run'


def test_training_logit_scale_follows_the_loss():
    assert training_logit_scale({'loss': 'ldam', 'ldam_s': None}) == 30.0  # LDAMLoss's default
    assert training_logit_scale({'loss': 'ldam', 'ldam_s': 10.0}) == 10.0
    assert training_logit_scale({'loss': 'ce'}) == 1.0
    assert training_logit_scale({}) is None
    logits, counts = torch.tensor([[0.5, -0.2, 0.1]]), [100, 10, 1]
    expected = 30 * logits - torch.log(torch.tensor(counts) / 111.0)
    torch.testing.assert_close(logit_adjust(logits, counts, tau=1.0, scale=30.0), expected)


def test_logit_adjust_on_the_zoo_cosine_model_beats_chance():
    # The zoo tag (LDAM, cosine head) on the demo's CIFAR-10 test images. Unscaled, the log-priors swamp its
    # [-1, 1] logits and most images go to the rarest classes (near chance); on the trained scale it stays accurate.
    common = ['--model', ZOO_TAG, '--dataset', 'demo', '-b', '250', '-j', '0']
    plain = validate_script.main(common)
    adjusted = validate_script.main([*common, '--logit-adjust', '1.0'])
    unscaled = validate_script.main([*common, '--logit-adjust', '1.0', '--logit-scale', '1'])
    assert adjusted['logit_scale'] == 30.0
    assert unscaled['top1'] < plain['top1'] / 3
    assert adjusted['top1'] > plain['top1'] - 5
    assert adjusted['medium'] > plain['medium']  # the prior correction moves predictions to the rarer classes


def test_zoo_cosine_model_loss_and_ece_are_those_of_its_trained_scale():
    """The zoo tag (LDAM, s = 30) on the demo's CIFAR-10 test images: validate.py's loss and ECE are the cross-entropy
    and ECE of 30 x the model's cosine logits, the probabilities LDAM fitted, and the result says so."""
    import timm
    from timm.data import resolve_data_config

    from rsg_timm.data import create_lt_dataset, create_lt_loader
    from rsg_timm.metrics import calibration_error

    result = validate_script.main(['--model', ZOO_TAG, '--dataset', 'demo', '-b', '500', '-j', '0'])
    model = timm.create_model(ZOO_TAG, pretrained=True).eval()
    dataset = create_lt_dataset('demo', split='test', is_training=False)
    loader = create_lt_loader(dataset, dataset_name='demo', batch_size=500, is_training=False,
                              data_config=resolve_data_config({}, model=model))
    with torch.no_grad():
        logits, target = map(torch.cat, zip(*[(model(images), labels) for images, labels in loader]))
    assert logits.abs().max() <= 1 + 1e-5 and result['logit_scale'] == 30.0  # cosine logits, LDAM's s
    assert result['loss'] == pytest.approx(torch.nn.functional.cross_entropy(30 * logits, target).item(), abs=1e-3)
    assert result['ece'] == pytest.approx(calibration_error(30 * logits, target)[0], abs=1e-3)


def test_cosine_model_without_a_recorded_loss_is_refused(demo_run, tmp_path):
    bare = tmp_path / 'bare.pth'  # a state_dict alone records neither the loss nor the dataset
    torch.save(load_training_checkpoint(str(demo_run / 'last.pth.tar'))['state_dict'], bare)
    common = ['--model', 'cifar_resnet20', '--checkpoint', str(bare), '--model-kwargs', 'use_norm=True']
    with pytest.raises(ValueError, match='does not record the dataset.*pass --dataset'):
        validate_script.main(common)
    data = ['--dataset', 'demo', '--data-dir', str(load_training_checkpoint(str(demo_run / 'last.pth.tar'))['args']
                                                    .data_dir)]
    with pytest.raises(ValueError, match='cosine classifier.*--logit-scale'):
        validate_script.main([*common, *data, '--logit-adjust', '1.0'])
    assert validate_script.main([*common, *data, '--logit-adjust', '1.0', '--logit-scale', '30'])['logit_scale'] == 30


def test_dataset_and_scale_come_from_the_record(demo_run, tiny_demo, tmp_path):
    by_checkpoint = validate_script.main(['--model', 'rsg_resnet20', '--checkpoint', str(demo_run / 'last.pth.tar'),
                                          '--logit-adjust', '1.0'])
    by_export = validate_script.main(['--model', f'local-dir:{demo_run}', '--results-file', str(tmp_path / 'r.json'),
                                      '--results-format', 'json'])
    for result in (by_checkpoint, by_export):  # the tiny demo set, found through the recorded --data-dir
        assert (result['dataset'], result['split'], result['num_images']) == ('demo', 'test', 80)
    assert by_checkpoint['logit_scale'] == 30.0  # the default recipe on a CIFAR ResNet: LDAM
    saved = json.loads((tmp_path / 'r.json').read_text())  # strict JSON: the empty many-shot group is null
    assert saved['many'] is None and saved['num_images'] == 80


def test_zoo_tags_carry_their_training_profile():
    for name, entry in load_pretrained_tags().items():
        assert entry['class_counts'] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50], name
        assert entry['train_args']['dataset'] == 'cifar10_lt' and entry['train_args']['loss'] == 'ldam', name
    with pytest.raises(FileNotFoundError, match='CIFAR-10 data.*data-dir'):  # the recorded dataset, not the demo, is what it asks for
        validate_script.main(['--model', ZOO_TAG, '--data-dir', os.devnull])


def test_a_model_without_class_counts_is_grouped_by_the_profile_its_run_recorded(tiny_demo, caplog):
    # the zoo tag's weights carry no class counts; its entry records CIFAR-10-LT's (many-shot down to 139 images).
    # The tiny demo's own profile (40 images or fewer a class) would put every class in few-shot.
    with caplog.at_level(logging.INFO, logger='validate'):
        result = validate_script.main(['--model', ZOO_TAG, '--dataset', 'demo', '--data-dir', tiny_demo, '-j', '0'])
    assert result['many'] is not None and result['medium'] is not None and result['few'] is None
    assert 'from the demo profile' not in caplog.text


def test_an_unrecorded_profile_flag_takes_train_pys_default():
    """A record without --imb-factor / --imb-select (or of another dataset) means train.py's defaults were used."""
    import argparse
    from rsg_timm.train_flags import build_train_parser
    defaults = build_train_parser()
    for record in ({'dataset': 'cifar10_lt', 'imb_type': 'exp'}, {'dataset': 'cifar100_lt', 'imb_factor': 0.1}):
        args = argparse.Namespace(model='m', dataset='cifar10_lt', data_dir=None, imb_type=None, imb_factor=None,
                                  imb_select=None)
        validate_script._resolve_dataset(args, record)
        assert args.imb_factor == defaults.get_default('imb_factor') and args.imb_factor is not None
        assert args.imb_select == defaults.get_default('imb_select') and args.imb_select is not None


def test_has_nonlinear_classifier():
    import timm
    assert has_nonlinear_classifier(timm.create_model('cifar_resnet20', use_norm=True))
    assert not has_nonlinear_classifier(timm.create_model('cifar_resnet20'))


def test_exported_weights_are_as_readable_as_the_rest(demo_run):
    mode = os.stat(demo_run / 'config.json').st_mode & 0o777
    assert os.stat(demo_run / 'model.safetensors').st_mode & 0o777 == mode


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, 'cifar10_test.npz')),
                    reason='shared CIFAR-10 npz not present')
def test_balanced_test_split_is_not_logged_as_cut(caplog):
    from rsg_timm.data.cifar_lt import CifarLT
    caplog.set_level(logging.INFO)
    CifarLT(SHARED_DATA, train=False)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith('CIFAR-10-LT test'))
    assert line.startswith('CIFAR-10-LT test: 10000 images, balanced')


def _noted_last_epoch(entry: dict) -> dict:
    """The last-epoch numbers a zoo tag's first note states: 'top-1 X (last epoch N; many X, medium X, few X)'."""
    note = entry['notes'][0]
    numbers = dict(re.findall(r'(top-1|many|medium|few) (\d+\.\d+|nan)', note.split(');')[0]))
    return {('top1' if k == 'top-1' else k): float(v) for k, v in numbers.items()}


CIFAR10_LT_TAGS = sorted(name for name, entry in load_pretrained_tags().items()
                         if entry.get('train_args', {}).get('dataset') == 'cifar10_lt')


@pytest.mark.slow  # about 50 s a tag on one busy CPU thread; run it when shipping a tag (RSG_TIMM_SLOW=1)
@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_DATA, 'cifar10_test.npz')),
                    reason=f'real CIFAR-10 not found: needs {SHARED_DATA}/cifar10_test.npz')
@pytest.mark.parametrize('tag', CIFAR10_LT_TAGS)
def test_zoo_tags_reproduce_their_numbers_on_the_cifar10_test_images(tag):
    """validate.py on the 10,000 test images gives, to the notes' two decimals, what the tag says it scores."""
    noted = _noted_last_epoch(load_pretrained_tags()[tag])
    result = validate_script.main(['--model', tag, '--data-dir', SHARED_DATA, '-b', '500', '-j', '0'])
    assert set(noted) == {'top1', 'many', 'medium', 'few'}
    for key, value in noted.items():
        if math.isnan(value):  # no class in that group
            assert result[key] is None or math.isnan(result[key]), key
        else:
            assert round(result[key], 2) == value, key


def test_a_checkpoint_scores_what_its_export_scores_at_the_trained_data_config(tiny_folder, tmp_path, caplog):
    # test_resnet's own config is 160 px, crop 0.95, bilinear, mean/std 0.5: the run changes each of them, and the
    # checkpoint (which records them only as training arguments) must be evaluated as the export (config.json) is.
    out = tmp_path / 'runs'
    data_config = ['--img-size', '32', '--crop-pct', '1.0', '--interpolation', 'bicubic',
                   '--mean', '0.4', '0.45', '0.5', '--std', '0.2', '0.25', '0.3']
    train_script.main(['--model', 'test_resnet', '--dataset', 'folder_lt', '--data-dir', tiny_folder, '--val-split',
                       'val', '--output', str(out), '--experiment', 'run', '-b', '8', '--epochs', '1', '--lr', '0.01',
                       '--warmup-epochs', '0', '-j', '0', '--no-progress', '--log-interval', '0', *data_config])
    common = [tiny_folder, '--split', 'val', '-j', '0', '-b', '4', '--log-freq', '1']  # timm's positional data dir
    with caplog.at_level(logging.INFO, logger='validate'):
        by_checkpoint = validate_script.main(['--model', 'test_resnet', '--checkpoint',
                                              str(out / 'run' / 'last.pth.tar'), *common])
    exported = validate_script.main(['--model', f'local-dir:{out / "run"}', *common])
    assert by_checkpoint['img_size'] == exported['img_size'] == 32
    for key in ('loss', 'top1', 'ece'):
        assert by_checkpoint[key] == pytest.approx(exported[key], rel=1e-6), key
    assert 'data config: input_size (3, 32, 32), interpolation bicubic, crop_pct 1.0' in caplog.text
    assert '(--img-size, --crop-pct, --mean, --std, --interpolation as ' in caplog.text  # restored, and said so
    assert 'eval batch 1/3' in caplog.text  # progress every --log-freq batches
    at_64 = validate_script.main(['--model', 'test_resnet', '--checkpoint', str(out / 'run' / 'last.pth.tar'),
                                  *common, '--img-size', '64'])
    assert at_64['img_size'] == 64 and at_64['loss'] != pytest.approx(by_checkpoint['loss'], rel=1e-6)


def test_positional_data_dir_and_data_dir_must_agree(tmp_path):
    with pytest.raises(ValueError, match='two dataset roots'):
        validate_script.main(['A', '--data-dir', 'B', '--model', 'cifar_resnet20', '--dataset', 'demo'])
