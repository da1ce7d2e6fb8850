"""Model cards say what the run was (the demo's measured ρ, not an ignored flag), read as a demo when they are one,
embed the run's figures, and give commands that work; training curves are drawn with the [plot] extra."""
import pandas as pd
import pytest

from rsg_timm.metrics import _loss_columns, plot_training_curves
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
    assert '`--imb-factor`' not in card  # the demo set ignores it
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
