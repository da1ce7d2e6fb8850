"""Model cards say what the run was (the demo's measured ρ, not an ignored flag; the flags that acted, image size
first; the split by its name; only the phases that ran), read as a demo when they are one, carry metadata the Hub parses,
embed the run's figures, and give commands that work; training curves are drawn with the [plot] extra."""
import pandas as pd
import pytest

from rsg_timm.plots import _loss_columns, plot_training_curves
from rsg_timm.model_card import create_model_card
from rsg_timm.run_folder import TrainingRun


DEMO_COUNTS = [300, 205, 140, 96, 65, 45, 30, 21, 14, 10]  # the demo's exp profile, ρ = 30


def _run(tmp_path, dataset, **args):
    summary = pd.DataFrame({'epoch': [0, 1], 'train_ce': [2.0, 1.5], 'train_cesc': [900.0, 800.0],
                            'train_mv': [0.0, 50.0], 'train_top1': [20.0, 30.0], 'eval_loss': [2.2, 2.0],
                            'eval_top1': [20.0, 25.2], 'eval_top5': [60.0, 70.0], 'eval_many': [50.0, 69.3],
                            'eval_medium': [5.0, 8.8], 'eval_few': [0.0, 0.0], 'eval_ece': [9.0, 8.0],
                            'lr': [0.1, 0.001]})
    summary.to_csv(tmp_path / 'summary.csv', index=False)
    args = dict(dict(model='rsg_resnet32', dataset=dataset, imb_type='exp', imb_factor=0.01, loss='ldam',
                     reweight='drw', epochs=30), **args)
    return TrainingRun(tmp_path, args, summary, None)


def test_demo_card_is_consistent_and_reads_as_a_demo(tmp_path):
    (tmp_path / 'curves.png').write_bytes(b'png')
    card = create_model_card(_run(tmp_path, 'demo'), {'architecture': 'cifar_resnet32', 'class_counts': DEMO_COUNTS},
                             'me/demo', needs_plugin=True)
    assert 'demo (ρ = 30, 10 classes)' in card and 'ρ = 100' not in card
    assert '| `--imb-factor` |' not in card  # the demo set ignores it
    assert 'A demo, not a usable classifier' in card and '25.2% top-1' in card
    assert '![Training curves](curves.png)' in card
    assert 'python validate.py --model hf-hub:me/demo --dataset demo\n' in card  # no --data-dir for the demo
    assert 'not part of its pip package' in card and 'Needs `pip install timm`' in card
    assert 'logit_adjust(logits, class_counts, tau=1.0, scale=30)' in card  # LDAM's logits are cosine x s


def test_research_card_states_intended_use_and_short_schedule(tmp_path):
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    card = create_model_card(_run(tmp_path, 'cifar10_lt', epochs=20),
                             {'architecture': 'cifar_resnet32', 'class_counts': counts}, 'me/r100', needs_plugin=True)
    assert 'cifar10_lt (ρ = 100, 10 classes)' in card and 'Intended for research on long-tailed' in card
    assert '20 epochs is far shorter' in card and '--dataset cifar10_lt --data-dir DATA' in card
    assert 'A demo' not in card and '## Figures' not in card


def _recipe(card):
    """The recipe table's rows, ``{setting: value}``, in order."""
    table = card.split('## Recipe\n\n')[1].split('\n\n')[0].splitlines()[2:]
    return dict(tuple(cell.strip() for cell in row.strip('|').split('|')) for row in table)


def test_recipe_lists_the_flags_that_acted_image_size_first(tmp_path):
    args = dict(model='rsg_resnet18', imb_type='none', imb_factor=0.01, imb_select='first',
                img_size=64, drop_path=0.1, sampler='deferred', drs_epoch=1, loss='ce', reweight='none',
                drw_epoch=1, opt='adamw', momentum=0.9, sched='cosine', decay_milestones=[1, 2], decay_rate=0.1,
                warmup_epochs=0, warmup_lr=0.02, ldam_s=30.0, epochs=3, lr=0.001, amp=False, amp_dtype='bfloat16')
    config = {'architecture': 'resnet18', 'num_classes': 10, 'pretrained_cfg': {'input_size': [3, 64, 64]}}
    recipe = _recipe(create_model_card(_run(tmp_path, 'folder_lt', **args), config, 'me/r18', needs_plugin=False))
    assert list(recipe)[0] == 'image size' and recipe['image size'] == '64 x 64 (`--img-size 64`)'
    assert recipe['`--warmup-epochs`'] == '0'  # a zero that differs from the default is a setting, not 'off'
    assert recipe['`--drop-path`'] == '0.1' and recipe['`--drs-epoch`'] == '1' and recipe['`--epochs`'] == '3'
    for inert in ('imb-factor', 'imb-select', 'momentum', 'decay-milestones', 'decay-rate', 'drw-epoch', 'ldam-s',
                  'warmup-lr', 'amp-dtype', 'amp'):  # no cut, AdamW, cosine, no DRW, CE, no warm-up, no AMP
        assert f'`--{inert}`' not in recipe, inert


def test_a_short_run_names_only_the_phases_that_ran(tmp_path):
    """Four epochs of a recipe whose DRS and RSG generation switch at 24/23: neither acted, so neither is named."""
    run = _run(tmp_path, 'cifar10_lt', model='rsg_resnet32', loss='ce', reweight='drw', drw_epoch=24,
               sampler='deferred', drs_epoch=24, rsg_epoch_thresh=23, epochs=4)
    run.summary['train_generated'] = 0.0
    card = create_model_card(run, {'architecture': 'cifar_resnet32'}, 'me/short', needs_plugin=True)
    assert 'with CE.' in card and 'RSG\n' not in card.split('## Recipe')[0].split('---')[2].replace('RSG](', '')
    assert 'RSG generated no sample in epochs 0-1' in card
    assert 'DRW was set to start at epoch 24, but the run ended at epoch 1' in card
    assert 'Deferred re-sampling (DRS) was set to start at epoch 24' in card
    assert _recipe(card)['`--drw-epoch`'] == '24 (never reached: the run ended at epoch 1)'
    assert '- rsg\n' not in card.split('---')[1]  # no rsg tag either
    run.summary['train_generated'] = [0.0, 3.5]
    ran = create_model_card(run, {'architecture': 'cifar_resnet32'}, 'me/short', needs_plugin=True)
    assert 'with CE + RSG.' in ran and '- rsg\n' in ran.split('---')[1]


def test_the_evaluated_split_is_named_as_on_disk(tmp_path):
    (tmp_path / 'data' / 'val').mkdir(parents=True)
    folder = create_model_card(_run(tmp_path, 'folder_lt', data_dir=str(tmp_path / 'data'), val_split='test'),
                               {'architecture': 'resnet18'}, 'me/f', needs_plugin=False)
    assert 'Accuracy (%) on the `val/` folder;' in folder and 'balanced' not in folder.split('## Results')[1][:200]
    assert '| best top1 on val/ (epoch 1) |' in folder
    inat = create_model_card(_run(tmp_path, 'inat2018', val_split='test'), {'architecture': 'resnet50'}, 'me/i',
                             needs_plugin=False)
    assert 'Accuracy (%) on the balanced `val` split;' in inat


def test_metadata_is_what_the_hub_parses(tmp_path):
    huggingface_hub = pytest.importorskip('huggingface_hub')
    run = _run(tmp_path, 'cifar10_lt', model='rsg_resnet18', pretrained=True, loss='ce', reweight='none')
    config = {'architecture': 'resnet18', 'num_classes': 10, 'pretrained_cfg': {'input_size': [3, 32, 32]}}
    card = create_model_card(run, config, 'me/r18', needs_plugin=False, num_params=11_181_642)
    (tmp_path / 'README.md').write_text(card, encoding='utf-8')
    data = huggingface_hub.ModelCard.load(tmp_path / 'README.md').data
    assert huggingface_hub.metadata_load(tmp_path / 'README.md')['library_name'] == 'timm'
    assert (data.library_name, data.license, data.base_model) == ('timm', 'apache-2.0', 'timm/resnet18.a1_in1k')
    assert data.datasets == ['uoft-cs/cifar10'] and 'long-tail' in data.tags
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results == {'Top-1 accuracy (last epoch)': 25.2, 'Many-shot accuracy (last epoch)': 69.3,
                       'Medium-shot accuracy (last epoch)': 8.8, 'Few-shot accuracy (last epoch)': 0.0}
    assert {r.dataset_split for r in data.eval_results} == {'test'}
    assert '11.18 M parameters' in card and 'image size: 32 x 32' in card
    assert 'started from the timm weights [timm/resnet18.a1_in1k]' in card
    local = create_model_card(_run(tmp_path, 'cifar10_lt', model='rsg_resnet18', pretrained=True, initial_checkpoint='',
                                   pretrained_path='/data/r18.safetensors'), config, 'me/r18', needs_plugin=False)
    assert 'base_model' not in local and _recipe(local)['`--pretrained-path`'] == 'r18.safetensors'
    assert '`--initial-checkpoint`' not in _recipe(local)  # unset: ''


def test_usage_gives_calibrated_top5_and_features(tmp_path):
    run = _run(tmp_path, 'cifar10_lt', model='rsg_resnet50')
    run.summary['eval_logit_scale'] = 30.0
    config = {'architecture': 'resnet50', 'num_classes': 10, 'num_features': 2048, 'cosine_classifier': True,
              'logit_scale': 30.0}
    card = create_model_card(run, config, 'me/r50', needs_plugin=False)
    assert 'pre_logits=True)  # pooled features [1, 2048]' in card and 'top5 = probabilities.topk(5)' in card
    assert 'logits = model.get_classifier()(torch.nn.functional.normalize(features, dim=-1))' in card
    assert 'probabilities = (30 * logits).softmax(dim=-1)' in card
    assert 'ECE (%, 15 bins) is that of softmax(30 x logits)' in card
    del run.summary['eval_logit_scale']  # a run from before the scale was applied to its ECE says so
    old = create_model_card(run, config, 'me/r50', needs_plugin=False)
    assert 'measured on the logits as they are, not on the 30 x logits' in old
    plain = create_model_card(_run(tmp_path, 'cifar10_lt', model='resnet50', loss='ce', reweight='none'),
                              {'architecture': 'resnet50', 'num_classes': 10}, 'me/p', needs_plugin=False)
    assert 'probabilities = logits.softmax(dim=-1)' in plain and 'normalize' not in plain


def test_loss_curves_show_every_auxiliary_term():
    columns = ['epoch', 'train_loss', 'train_ce', 'train_cesc', 'train_mv', 'train_generated', 'train_top1',
               'train_lr', 'train_images_per_sec', 'eval_loss', 'eval_top1', 'lr']
    assert _loss_columns(columns) == ('train_ce', 'train_cesc', 'train_mv', 'eval_loss')
    assert _loss_columns([c for c in columns if c not in ('train_cesc', 'train_mv')]) == ('train_ce', 'eval_loss')


def test_training_curves_png(tmp_path):
    pytest.importorskip('matplotlib')
    _run(tmp_path, 'demo')
    out = plot_training_curves(str(tmp_path / 'summary.csv'), str(tmp_path / 'curves.png'))
    assert out and (tmp_path / 'curves.png').read_bytes()[:4] == b'\x89PNG'


def test_card_links_the_repository_the_package_names(tmp_path, monkeypatch):
    import email.message

    from rsg_timm import model_card

    meta = email.message.Message()
    meta['Project-URL'] = 'Source, https://example.org/rsg_timm'
    monkeypatch.setattr(model_card.importlib.metadata, 'metadata', lambda name: meta)
    card = create_model_card(_run(tmp_path, 'demo'), {'architecture': 'cifar_resnet32'}, 'me/d', needs_plugin=True)
    assert f'trained with [rsg_timm](https://example.org/rsg_timm) {model_card.__version__}, the timm plugin' in card
