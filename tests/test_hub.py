"""Hub push (dry run and a mocked HfApi), pulling from an offline Hub cache, and the pretrained-tag model zoo."""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
import yaml
from timm.models import get_pretrained_cfg

from rsg_timm import hub
from rsg_timm.eval_model import create_eval_model
from rsg_timm.models.pretrained import load_pretrained_tags, resolve_zoo_tag
from rsg_timm.zoo_authoring import add_pretrained, remove_pretrained

from helpers import TINY_COUNTS, load_script

COUNTS = TINY_COUNTS
REPO_ID = 'me/rsg_resnet32.tiny'
STAGED = ['README.md', 'args.yaml', 'config.json', 'model.safetensors', 'per_class.csv', 'summary.csv']


@pytest.fixture(scope='module')
def run_dir(trained_run):
    """The shared rsg_resnet32 run (LDAM-DRW: a cosine head, so the export carries model_args)."""
    return trained_run.dir


@pytest.fixture(scope='module')
def staged(run_dir, tmp_path_factory):
    return Path(hub.push_to_hub(run_dir, REPO_ID, dry_run_dir=tmp_path_factory.mktemp('dry') / 'staged'))


def _logits(model, seed=0):
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return model.eval()(x)


def _files(folder):
    return {p.name: p.read_bytes() for p in Path(folder).iterdir()}


def test_dry_run_stages_export_card_and_records(run_dir, staged):
    figures = [name for name in ('curves.png', 'per_class.png') if (run_dir / name).is_file()]  # [plot] extra
    assert sorted(os.listdir(staged)) == sorted(STAGED + figures)
    if importlib.util.find_spec('matplotlib') is not None:
        card = (staged / 'README.md').read_text()
        assert len(figures) == 2 and all(f']({name})' in card for name in figures)
    for name in ('config.json', 'model.safetensors', 'summary.csv', 'per_class.csv'):
        assert (staged / name).read_bytes() == (run_dir / name).read_bytes(), name
    recipe = yaml.safe_load((staged / 'args.yaml').read_text())
    assert recipe['model'] == 'rsg_resnet32' and recipe['rsg_epoch_thresh'] == 0
    assert not {'data_dir', 'output', 'experiment', 'device'} & set(recipe)  # machine-specific paths removed

    card = (staged / 'README.md').read_text()
    meta = yaml.safe_load(card.split('---\n')[1])
    assert meta['library_name'] == 'timm' and meta['license'] == 'apache-2.0'
    assert meta['tags'] == ['image-classification', 'timm', 'long-tail', 'rsg'] and meta['datasets']
    summary = pd.read_csv(run_dir / 'summary.csv')
    best_epoch = int(summary.loc[summary['eval_top1'].idxmax(), 'epoch'])
    for text in ('| `--model` | rsg_resnet32 |', '| `--loss` | ldam |', '| `--rsg-epoch-thresh` | 0 |',
                 'LDAM + DRW + RSG', '| many | > 100 | 0 |', '| medium | 20..100 | 3 |', '| few | < 20 | 7 |',
                 '| last epoch (1) |', f'best top1 on test (epoch {best_epoch})', "published weights are the last epoch's",
                 '| 9 | c9 | 2 | 8 |', 'python train.py --config args.yaml', f"create_model('hf-hub:{REPO_ID}'",
                 f'python validate.py --model hf-hub:{REPO_ID}', 'import timm, torch, rsg_timm',
                 'author    = {Wang, Jianfeng and Lukasiewicz, Thomas and Hu, Xiaolin and Cai, Jianfei and Xu, '
                 'Zhenghua}', 'Apache-2.0'):
        assert text in card, text
    assert f'| last epoch (1) | {summary["eval_top1"].iloc[-1]:.2f} |' in card


def test_card_usage_runs_and_gives_the_trained_probabilities(run_dir, staged, tmp_path):
    """The card's Python example, on the staged export: top-5 probabilities are softmax(30 x the cosine logits) that
    LDAM trained, and the features are the pooled backbone output."""
    from PIL import Image

    card = (staged / 'README.md').read_text()
    code = card.split('```python\n')[1].split('\nimport json')[0]
    Image.new('RGB', (40, 40), (200, 30, 60)).save(tmp_path / 'image.jpg')
    code = code.replace(f'hf-hub:{REPO_ID}', f'local-dir:{staged}')
    code = code.replace("'image.jpg'", repr(str(tmp_path / 'image.jpg')))
    namespace = {}
    exec(code, namespace)
    model, x = namespace['model'], namespace['x']
    expected = (30 * model(x)).softmax(dim=-1)
    torch.testing.assert_close(namespace['top5'].values, expected.topk(5).values)
    assert namespace['features'].shape == (1, model.num_features) and '0.46 M parameters' in card


def test_push_uploads_the_staged_folder(run_dir, staged, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(('init', token))

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(('create_repo', repo_id, private, exist_ok))
            return f'https://huggingface.co/{repo_id}'

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(('upload_folder', repo_id, commit_message, _files(folder_path)))

    monkeypatch.setattr(hub, 'HfApi', FakeApi)
    url = hub.push_to_hub(run_dir, REPO_ID, private=True, token='tok', commit_message='msg')
    assert url == f'https://huggingface.co/{REPO_ID}'
    assert calls[:2] == [('init', 'tok'), ('create_repo', REPO_ID, True, True)]
    assert calls[2][:3] == ('upload_folder', REPO_ID, 'msg') and calls[2][3] == _files(staged)


def test_push_reexports_a_run_without_export(run_dir, tmp_path):
    partial = tmp_path / 'partial'
    shutil.copytree(run_dir, partial, ignore=shutil.ignore_patterns('model.safetensors', 'config.json'))
    out = hub.main(['push', str(partial), '--repo-id', REPO_ID, '--dry-run', str(tmp_path / 'out')])
    config = json.loads((Path(out) / 'config.json').read_text())
    assert config['class_counts'] == COUNTS and config['label_names'][0] == 'c0'
    assert config['logit_scale'] == 30.0  # LDAM's s, from the checkpoint's arguments
    reexported = timm.create_model(f'local-dir:{out}', pretrained=True)
    exported = timm.create_model(f'local-dir:{run_dir}', pretrained=True)
    torch.testing.assert_close(_logits(reexported), _logits(exported), rtol=0, atol=0)


def test_push_names_what_is_missing(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        hub.push_to_hub(tmp_path / 'nope', REPO_ID, dry_run_dir=tmp_path / 'out')
    with pytest.raises(FileNotFoundError, match='no args.yaml'):
        hub.push_to_hub(tmp_path, REPO_ID, dry_run_dir=tmp_path / 'out')
    bare = tmp_path / 'bare'
    shutil.copytree(run_dir, bare, ignore=shutil.ignore_patterns('*.safetensors', '*.pth.tar'))
    with pytest.raises(FileNotFoundError, match='last.pth.tar'):
        hub.push_to_hub(bare, REPO_ID, dry_run_dir=tmp_path / 'out')
    with pytest.raises(ValueError, match='ORG/NAME'):
        hub.push_to_hub(run_dir, 'no-org', dry_run_dir=tmp_path / 'out')
    with pytest.raises(ValueError, match='another folder'):
        hub.push_to_hub(run_dir, REPO_ID, dry_run_dir=run_dir)


def test_pull_from_offline_hub_cache(run_dir, staged, tiny_demo, tmp_path):
    commit = '0123456789abcdef0123456789abcdef01234567'
    cache = tmp_path / 'hub'
    repo = cache / f'models--{REPO_ID.replace("/", "--")}'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    shutil.copytree(staged, repo / 'snapshots' / commit)

    expected = _logits(timm.create_model(f'local-dir:{run_dir}', pretrained=True))
    pulled = timm.create_model(f'hf-hub:{REPO_ID}', pretrained=True, cache_dir=cache)
    torch.testing.assert_close(_logits(pulled), expected, rtol=0, atol=0)
    model, counts, names = create_eval_model(f'hf-hub:{REPO_ID}', cache_dir=str(cache))
    assert counts == COUNTS and names[0] == 'c0'

    validate = load_script('validate.py').main
    common = ['--data-dir', tiny_demo, '-b', '40']
    from_hub = validate(['--model', f'hf-hub:{REPO_ID}', '--model-kwargs', f'cache_dir={cache}', *common])
    from_run = validate(['--model', f'local-dir:{run_dir}', *common])
    for key in ('top1', 'many', 'medium', 'few', 'ece'):
        assert from_hub[key] == pytest.approx(from_run[key], nan_ok=True), key


# -- model zoo (pretrained tags) --

def test_untagged_cfg_stays_the_default():
    cfg = get_pretrained_cfg('cifar_resnet32')
    assert not cfg.has_weights and not cfg.tag
    with pytest.raises(RuntimeError, match='No pretrained weights'):
        timm.create_model('cifar_resnet32', pretrained=True)


def test_zoo_tag_resolves_to_its_cfg_and_model_args(tmp_path):
    (tmp_path / 'cifar_resnet20.shipped.safetensors').write_bytes(b'')
    tags = {'cifar_resnet20.shipped': dict(num_classes=7, hf_hub_id='me/a', model_args=dict(use_norm=True)),
            'cifar_resnet20.hub_only': dict(num_classes=5, hf_hub_id='me/b'), 'other_arch.x': dict(num_classes=3)}

    def resolve(tag, **kwargs):
        return resolve_zoo_tag('cifar_resnet20', dict(kwargs, pretrained_cfg=tag), tags=tags, pretrained_dir=tmp_path)

    shipped = resolve('shipped', num_classes=7)
    cfg = shipped.pop('pretrained_cfg')
    assert shipped == dict(use_norm=True, num_classes=7)
    assert cfg['file'] == str((tmp_path / 'cifar_resnet20.shipped.safetensors').resolve()) and cfg['num_classes'] == 7
    assert cfg['architecture'] == 'cifar_resnet20' and cfg['tag'] == 'shipped' and cfg['input_size'] == (3, 32, 32)
    assert resolve('shipped', use_norm=False)['use_norm'] is False  # the caller's kwargs win
    hub_only = resolve('hub_only')['pretrained_cfg']
    assert hub_only.get('file') is None and hub_only['hf_hub_id'] == 'me/b' and hub_only['num_classes'] == 5
    for tag in ('x', 'unknown', None):  # other architectures' tags and non-zoo cfgs are left to timm
        assert resolve(tag) == {'pretrained_cfg': tag}


def test_add_pretrained_then_load_the_tag(run_dir, tmp_path):
    name, entry = add_pretrained(run_dir, 'zoo_test', 'me/zoo', pretrained_dir=tmp_path, notes=['a note'])
    assert name == 'cifar_resnet32.zoo_test' and (tmp_path / f'{name}.safetensors').is_file()
    tags = load_pretrained_tags(tmp_path)
    assert tags == {name: entry}
    assert entry['num_classes'] == 10 and entry['model_args']['use_norm'] is True and entry['hf_hub_id'] == 'me/zoo'
    assert entry['notes'][0].startswith('top-1 ') and 'best-on-test' in entry['notes'][0]
    assert entry['notes'][-1] == 'a note' and entry['label_names'][0] == 'c0'
    recipe = entry['train_args']  # the published recipe: what validate.py reads back, and no path of this machine
    assert recipe['dataset'] == 'demo' and recipe['loss'] == 'ldam' and recipe['rsg_epoch_thresh'] == 0
    assert not {'data_dir', 'output', 'device', 'workers'} & set(recipe)

    # what create_model('cifar_resnet32.zoo_test', pretrained=True) does once the tag is in the shipped table
    kwargs = resolve_zoo_tag('cifar_resnet32', {'pretrained_cfg': 'zoo_test'}, tags=tags, pretrained_dir=tmp_path)
    assert kwargs['use_norm'] is True
    model = timm.create_model('cifar_resnet32', pretrained=True, **kwargs)
    expected = _logits(timm.create_model(f'local-dir:{run_dir}', pretrained=True))
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)

    with pytest.raises(ValueError, match='--replace'):
        add_pretrained(run_dir, 'zoo_test', pretrained_dir=tmp_path)
    with pytest.raises(ValueError, match='lower-case'):
        add_pretrained(run_dir, 'Bad.Tag', pretrained_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match='exported backbone'):
        add_pretrained(tmp_path, 'x', pretrained_dir=tmp_path)

    # the caller may state the notes itself, and a tag retires with its weights
    _, other = add_pretrained(run_dir, 'zoo_other', pretrained_dir=tmp_path, notes=['only this'], run_notes=False)
    assert other['notes'] == ['only this']
    remove_pretrained(name, pretrained_dir=tmp_path)
    assert sorted(load_pretrained_tags(tmp_path)) == ['cifar_resnet32.zoo_other']
    assert not (tmp_path / f'{name}.safetensors').exists()
    with pytest.raises(KeyError, match='zoo_other'):
        remove_pretrained(name, pretrained_dir=tmp_path)


@pytest.mark.parametrize('name', sorted(load_pretrained_tags()))
def test_shipped_tags_load_offline(name):
    """Every tag shipped in rsg_timm/pretrained loads by name, without the network."""
    entry = load_pretrained_tags()[name]
    model = timm.create_model(name, pretrained=True)
    assert model.num_classes == entry['num_classes'] and torch.isfinite(_logits(model)).all()


@pytest.mark.parametrize('name', ['cifar_resnet32.ldam_drw_cifar10_lt_r100_cpu20e',
                                  'cifar_resnet32.ldam_drw_rsg_cifar10_lt_r100_cpu20e'])
def test_retired_tags_are_not_offered(name):
    """The 20-epoch tags gave way to the 200-epoch recipe's: a weak checkpoint in a zoo misleads."""
    assert name not in load_pretrained_tags() and name not in timm.list_pretrained()
    with pytest.raises(RuntimeError, match='Invalid pretrained tag'):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize('bad_id', ['no-org', 'me/a..b', 'me/', 'a/b/c', 'me/-name'])
def test_push_and_add_pretrained_refuse_the_same_hub_ids(run_dir, tmp_path, bad_id):
    """One rule for every Hub id: ORG/NAME by the Hub's own validator, before anything is staged or written."""
    with pytest.raises(ValueError, match='--repo-id'):
        hub.push_to_hub(run_dir, bad_id, dry_run_dir=tmp_path / 'out')
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ValueError, match='--hf-hub-id'):
        add_pretrained(run_dir, 'zoo_test', bad_id, pretrained_dir=tmp_path / 'zoo')
    assert not (tmp_path / 'zoo').exists()
