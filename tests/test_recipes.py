"""The three large-scale recipes, built from the shipped configs the way train.py builds them, against the official
scripts (imagenet_lt_train.py, places_train.py, inaturalist_train.py of Jianf-Wang/RSG): loss and margins, head,
RSG settings, init, optimizer, transforms and the sampler before and after the re-sampling epoch. The learning
rate of every epoch and the switch epochs are pinned by test_schedule.py."""
import csv
import os

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import resolve_data_config
from timm.optim import create_optimizer_v2, optimizer_kwargs
from torchvision import transforms as T

from rsg_timm.recipes import create_recipe_model, resolve_recipe
from helpers import REPO_DIR, load_script
from rsg_timm.checkpoint import load_training_checkpoint
from rsg_timm.eval_model import create_eval_model
from rsg_timm.data import create_lt_dataset, create_sampler, sampler_kwargs
from rsg_timm.data.transforms import build_transform
from rsg_timm.losses import LDAMLoss, create_loss, create_reweight, loss_kwargs
from rsg_timm.models import NormedLinear
from rsg_timm.rsg import RSG

train = load_script('train.py')
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OFFICIAL = {  # config -> the official script's values
    'imagenet_lt_drs_rsg.yaml': dict(
        arch='resnext50_32x4d', num_classes=1000, max_m=0.3, s=30.0, lr=0.1, wd=2e-4, epochs=100, drs=80, thresh=79,
        pretrained=False, jitter=True, mean_std=IMAGENET_MEAN_STD),
    'places_lt_drs_rsg.yaml': dict(
        arch='resnet152', num_classes=365, max_m=0.2, s=50.0, lr=0.01, wd=1e-4, epochs=30, drs=10, thresh=9,
        pretrained=True, jitter=False, mean_std=IMAGENET_MEAN_STD, start='timm/resnet152.tv_in1k'),
    'inat2018_drs_rsg.yaml': dict(
        arch='resnet50', num_classes=8142, max_m=0.1, s=50.0, lr=0.1, wd=5e-5, epochs=180, drs=140, thresh=139,
        pretrained=False, jitter=True, mean_std=((0.466, 0.471, 0.380), (0.195, 0.194, 0.192))),
}
# A small long-tailed class profile stands in for the dataset (the model is built with the config's flags).
COUNTS = [50, 30, 20, 12, 8, 5, 3, 2, 2, 1]


def _args(config: str):
    args = train._parse_args(['--config', os.path.join(REPO_DIR, 'configs', config)])
    resolve_recipe(args)
    return args


@pytest.fixture(scope='module', params=sorted(OFFICIAL))
def recipe(request):
    """(config name, resolved args, the model train.py builds, official values); offline, so no weights download."""
    args = _args(request.param)
    args.pretrained = False
    model = create_recipe_model(args, len(COUNTS), COUNTS)
    return request.param, args, model, OFFICIAL[request.param]


def test_loss_is_ldam_with_the_official_margins_and_no_reweighting(recipe):
    _, args, _, official = recipe
    criterion = create_loss(args.loss, class_counts=COUNTS, **loss_kwargs(args))
    assert isinstance(criterion, LDAMLoss) and criterion.s == official['s']
    # official: m_j = max_m * n_j^(-1/4) / max_i n_i^(-1/4)
    m = 1.0 / np.sqrt(np.sqrt(np.array(COUNTS, dtype=np.float64)))
    np.testing.assert_allclose(criterion.margins.numpy(), m * official['max_m'] / m.max(), rtol=1e-6)
    # official per-class weights are 1 / (1 - 0^n) = 1 for every class and epoch
    reweight = create_reweight(args.reweight, COUNTS, beta=args.cb_beta, drw_epoch=args.drw_epoch)
    for epoch in (0, official['drs'], official['epochs'] - 1):
        weight = reweight.weight_for_epoch(epoch)
        assert weight is None or torch.equal(weight, torch.ones(len(COUNTS)))


def test_model_head_and_rsg_settings(recipe):
    _, args, model, official = recipe
    assert model.backbone_name == official['arch'] and args.pretrained is not None
    assert bool(_args(recipe[0]).pretrained) == official['pretrained']
    assert isinstance(model.fc, NormedLinear) and model.fc.out_features == len(COUNTS)
    rsg = model.rsg
    assert isinstance(rsg, RSG) and model.rsg_stage == 3 and (rsg.C, rsg.H, rsg.W) == (1024, 14, 14)
    assert (rsg.n_center, rsg.contrastive_module_dim, rsg.transfer_strength) == (15, 256, 1.0)
    assert rsg.epoch_thresh == official['thresh']
    assert (model.rsg_head_ratio, model.rsg_cesc_weight, model.rsg_mv_weight) == (0.2, 0.1, 0.01)
    assert model.rsg_head_classes == [0, 1]  # the 20 % most frequent classes


def test_start_weights_are_the_official_ones(recipe):
    # Places-LT starts from torchvision's v1 ResNet-152 (timm's resnet152.tv_in1k), as places_train.py does
    _, args, model, official = recipe
    if official['pretrained']:
        assert model.pretrained_cfg['hf_hub_id'] == official['start']
        assert model.pretrained_cfg['url'] == 'https://download.pytorch.org/models/resnet152-394f9c45.pth'


def test_official_init(recipe):
    _, _, model, _ = recipe
    # no zero-init of the last BN of each block (timm's default zero-inits it; the official ResNet does not)
    last_bns = [block.bn3.weight for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
                for block in stage]
    assert all(torch.equal(w, torch.ones_like(w)) for w in last_bns)
    # RSG re-initialised by the official backbone loop: kaiming fan_out convolutions, kaiming fan_in linear
    reduce = model.rsg.contrastive_module[0]  # 1x1, 2C -> 256: fan_out 256, fan_in 2048
    assert abs(reduce.weight.std().item() - (2 / 256) ** 0.5) < 0.1 * (2 / 256) ** 0.5
    fc = model.rsg.contrastive_fc  # 256 -> 2, N(0, 1) in RSG's own init
    assert abs(fc.weight.std().item() - (2 / 256) ** 0.5) < 0.3 * (2 / 256) ** 0.5
    assert not reduce.bias.any() and not fc.bias.any()


def test_optimizer_is_plain_sgd_decaying_every_parameter(recipe):
    _, args, model, official = recipe
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), filter_bias_and_bn=not args.decay_all_params)
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group['lr'], group['momentum'], group['nesterov'], group['weight_decay']) == \
        (official['lr'], 0.9, False, official['wd'])
    assert args.batch_size * 8 == 256 and args.epochs == official['epochs']


def _official_eval(mean_std):
    return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(*mean_std)])


def test_eval_transform_is_resize_256_centre_crop_224_bilinear(recipe):
    _, args, model, official = recipe
    data_config = resolve_data_config(vars(args), model=model)
    ours = build_transform(args.dataset, is_training=False, data_config=data_config)
    rng = np.random.default_rng(0)
    for size in ((300, 400), (517, 283)):
        image = Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8))
        torch.testing.assert_close(ours(image), _official_eval(official['mean_std'])(image), rtol=0, atol=1e-6)


def test_train_transform_is_bilinear_random_resized_crop_with_the_official_jitter(recipe):
    _, args, model, official = recipe
    data_config = resolve_data_config(vars(args), model=model)
    ours = build_transform(args.dataset, is_training=True, data_config=data_config)
    names = [type(t).__name__ for t in ours.transforms]  # nothing beyond the official steps (no erasing, no AA)
    assert names == ['RandomResizedCropAndInterpolation', 'RandomHorizontalFlip'] + \
        ['ColorJitter'] * official['jitter'] + ['MaybeToTensor', 'Normalize']
    crops = [t for t in ours.transforms if 'RandomResizedCrop' in type(t).__name__]
    assert crops[0].size == (224, 224) and crops[0].scale == (0.08, 1.0)
    np.testing.assert_allclose(crops[0].ratio, (3 / 4, 4 / 3))
    assert ours.transforms[1].p == 0.5
    assert 'bilinear' in str(crops[0].interpolation).lower()
    jitter = [t for t in ours.transforms if isinstance(t, T.ColorJitter)]
    assert bool(jitter) == official['jitter']
    if jitter:
        assert jitter[0].brightness == jitter[0].contrast == jitter[0].saturation == (0.6, 1.4)
        assert jitter[0].hue is None
    normalize = [t for t in ours.transforms if isinstance(t, T.Normalize)]
    np.testing.assert_allclose(normalize[0].mean, official['mean_std'][0])
    np.testing.assert_allclose(normalize[0].std, official['mean_std'][1])


def test_sampler_shuffles_without_replacement_before_the_resampling_epoch(recipe):
    _, args, _, official = recipe
    targets = np.repeat(np.arange(len(COUNTS)), COUNTS)
    sampler = create_sampler(args.sampler, targets, **sampler_kwargs(args))
    for epoch in (0, official['drs'] - 1):
        sampler.set_epoch(epoch)
        assert sorted(sampler) == list(range(len(targets)))  # every image exactly once
    sampler.set_epoch(official['drs'])
    drawn = torch.bincount(torch.as_tensor(list(sampler)), minlength=len(targets))
    assert drawn.max() > 1  # re-sampling with replacement, as the official ImbalancedDatasetSampler
    weights = (1 - 0.9999) / (1 - 0.9999 ** np.array(COUNTS, dtype=np.float64))
    np.testing.assert_allclose(sampler.class_probs().numpy(), weights * COUNTS / (weights * COUNTS).sum())


def test_without_drs_shuffle_the_deferred_sampler_draws_with_replacement():
    args = _args('imagenet_lt_drs_rsg.yaml')
    args.drs_shuffle = False
    targets = np.repeat(np.arange(len(COUNTS)), COUNTS)
    sampler = create_sampler(args.sampler, targets, **sampler_kwargs(args))
    assert sorted(sampler) != list(range(len(targets)))


def test_official_init_is_refused_for_the_cifar_resnets():
    args = train._parse_args(['--model', 'rsg_resnet32', '--official-init'])
    resolve_recipe(args)
    with pytest.raises(ValueError, match='official-init is for the timm ResNet family'):
        create_recipe_model(args, len(COUNTS), COUNTS)
    with pytest.raises(ValueError, match="rsg_init='rsg'"):
        timm.create_model('rsg_resnet32', rsg_init='backbone')


def test_configs_select_the_best_val_epoch_and_test_it(recipe):
    _, args, _, _ = recipe
    assert (args.val_split, args.select_on, args.test_split, args.eval_metric) == ('val', 'val', 'test', 'top1')


def _folder_lt(root, counts, per_eval_class: int = 3):
    """A tiny ImageFolder tree with train/val/test splits; images are 8x8, coloured by class."""
    rng = np.random.default_rng(0)
    for split, sizes in (('train', counts), ('val', [per_eval_class] * len(counts)),
                         ('test', [per_eval_class] * len(counts))):
        for c, n in enumerate(sizes):
            os.makedirs(root / split / f'c{c}', exist_ok=True)
            for i in range(n):
                pixels = np.clip(rng.integers(0, 40, (8, 8, 3)) + 50 * c, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / f'c{c}' / f'{i}.png')
    return str(root)


def test_select_on_val_exports_the_best_val_epoch_and_reports_its_test_numbers(tmp_path):
    data = _folder_lt(tmp_path / 'data', [6, 4, 2])
    result = train.main([
        '--dataset', 'folder_lt', '--imb-type', 'none', '--data-dir', data, '--model', 'rsg_test_resnet',
        '--loss', 'ldam', '--reweight', 'none', '--official-init', '--drs-shuffle', '--sampler', 'deferred',
        '--interpolation', 'bilinear', '--crop-pct', '0.875', '--val-split', 'val', '--select-on', 'val',
        '--epochs', '3', '-b', '4', '-j', '0', '--warmup-epochs', '0', '--rsg-epoch-thresh', '0', '--no-progress',
        '--log-interval', '0', '--output', str(tmp_path / 'runs'), '--experiment', 'run'])
    run = tmp_path / 'runs' / 'run'
    assert result['selected'].startswith(f'epoch {result["best_epoch"]}, best top1 on val, tested on test')
    assert result['best_epoch'] < 2  # this seeded run's best val epoch is not its last, so the export tells them apart
    best = load_training_checkpoint(str(run / 'model_best.pth.tar'))
    assert best['epoch'] == result['best_epoch']
    exported, _, _ = create_eval_model(f'local-dir:{run}')
    assert isinstance(exported.fc, NormedLinear)
    best_weights = dict(best['state_dict'], **{'fc.weight': F.normalize(best['state_dict']['fc.weight'], dim=1)})
    for k, v in exported.state_dict().items():  # the export is the best-val epoch's backbone
        torch.testing.assert_close(v, best_weights[k], rtol=0, atol=1e-6)
    cfg = exported.pretrained_cfg
    assert (cfg['crop_pct'], cfg['interpolation']) == (0.875, 'bilinear')
    # the reported numbers are that epoch's on the test split (3 images per class; val has 3 too, but other ones)
    with open(run / 'per_class.csv') as f:
        assert [int(row['test_count']) for row in csv.DictReader(f)] == [3, 3, 3]
    model = create_eval_model('rsg_test_resnet', checkpoint_path=str(run / 'model_best.pth.tar'))[0].eval()
    test_set = create_lt_dataset('folder_lt', data, split='test', is_training=False, imb_type='none')
    transform = build_transform('folder_lt', False, resolve_data_config({}, model=exported))
    with torch.no_grad():
        logits = model(torch.stack([transform(test_set[i][0]) for i in range(len(test_set))]))
    top1 = 100.0 * (logits.argmax(1) == torch.as_tensor(test_set.targets)).float().mean().item()
    assert result['top1'] == pytest.approx(top1)


def test_select_on_val_needs_a_val_split_apart_from_the_test_split():
    with pytest.raises(ValueError, match='--select-on val picks the epoch on --val-split'):
        resolve_recipe(train._parse_args(['--select-on', 'val']))


# ------------------------------------------------------------------------------------- smoke runs of the configs

SMOKE = {  # config -> dataset, list-file prefix, class count, overrides beyond the shared ones
    'imagenet_lt_drs_rsg.yaml': ('imagenet_lt', 'ImageNet_LT', 1000, {}),
    'places_lt_drs_rsg.yaml': ('places_lt', 'Places_LT', 365, {}),
    # LDAM needs an image in every class: 8142 would make a slow epoch, so this run trains CE (on the same head)
    'inat2018_drs_rsg.yaml': ('inat2018', 'iNaturalist18', 8142, {'loss': 'ce', 'rsg_n_center': 2}),
}


def _list_lt(root, prefix: str, num_classes: int, every_class: bool) -> str:
    """List files in the dataset's own format over a few 8x8 images: a long tail over classes 0-4 (plus one image
    of every other class when ``every_class``), 2 val and 2 test images of classes 0-4."""
    for c in range(5):
        os.makedirs(root / 'img', exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 50 * c, dtype=np.uint8)).save(root / 'img' / f'{c}.png')
    train_lines = [f'img/{c}.png {c}' for c, n in enumerate([12, 8, 5, 3, 2]) for _ in range(n)]
    if every_class:
        train_lines += [f'img/{c % 5}.png {c}' for c in range(5, num_classes)]
    eval_lines = [f'img/{c}.png {c}' for c in range(5) for _ in range(2)]
    splits = {'train': train_lines, 'val': eval_lines, 'test': eval_lines}
    for split, lines in splits.items():
        if split == 'test' and prefix == 'iNaturalist18':
            continue  # iNaturalist 2018's val list is its test set
        (root / f'{prefix}_{split}.txt').write_text('\n'.join(lines) + '\n')
    return str(root)


@pytest.mark.slow
def test_every_large_scale_config_runs_end_to_end(tmp_path):
    """Each config on a tiny set in its dataset's list format: train.py through both RSG phases and the re-sampling
    switch, the best-val export, validate.py on it (the same test top-1) and a plain-timm load (the same classes)."""
    import subprocess
    import sys
    import textwrap
    import time

    import yaml
    validate = load_script('validate.py')
    exports = {}
    for config, (dataset, prefix, num_classes, extra) in SMOKE.items():
        with open(os.path.join(REPO_DIR, 'configs', config)) as f:
            cfg = yaml.safe_load(f)
        data = _list_lt(tmp_path / dataset, prefix, num_classes, every_class=cfg['loss'] == 'ldam' and not extra)
        cfg.update(model='rsg_test_resnet', pretrained=False, img_size=32, epochs=2, drs_epoch=1, rsg_epoch_thresh=0,
                   decay_milestones=[2], warmup_epochs=0, batch_size=64, workers=0, no_progress=True,
                   log_interval=0, output=str(tmp_path / 'runs'), experiment=dataset, **extra)
        (tmp_path / config).write_text(yaml.safe_dump(cfg))
        start = time.time()
        result = train.main(['--config', str(tmp_path / config), '--data-dir', data])
        run = tmp_path / 'runs' / dataset
        validated = validate.main(['--model', f'local-dir:{run}', '--dataset', dataset, '--data-dir', data,
                                   '--split', 'test', '-b', '16'])
        print(f'{config}: {time.time() - start:.1f} s')
        assert result['selected'].endswith('on val, tested on test')
        for key in ('top1', 'top5', 'ece'):  # ECE only matches with the cosine logits restored from the export
            assert validated[key] == pytest.approx(result[key], abs=1e-3), key
        exports[dataset] = str(run)
    x = torch.randn(4, 3, 32, 32)
    expected = {name: create_eval_model(f'local-dir:{run}')[0].eval()(x).argmax(1).tolist()
                for name, run in exports.items()}
    script = textwrap.dedent(f'''
        import sys, timm, torch
        x = torch.load({str(tmp_path / "x.pt")!r})
        for name, run in {exports!r}.items():
            model = timm.create_model('local-dir:' + run, pretrained=True).eval()
            print(name, model(x).argmax(1).tolist())
        assert 'rsg_timm' not in sys.modules
    ''')
    torch.save(x, tmp_path / 'x.pt')
    out = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=dict(os.environ, HF_HUB_OFFLINE='1'),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split('\n')[:3] == [f'{name} {expected[name]}' for name in exports]


def test_cifar_configs_are_what_their_generator_writes(tmp_path):
    """The 72 CIFAR recipe files come from one table that takes RSG's settings from the rsg_* models' defaults: a
    changed default, or a hand-edited file, shows up here until the files are written again."""
    load_script('configs/make_cifar_recipes.py').main(str(tmp_path))
    written = sorted(os.listdir(tmp_path))
    assert len(written) == 72
    for name in written:
        assert (tmp_path / name).read_text() == open(os.path.join(REPO_DIR, 'configs', name)).read(), name
