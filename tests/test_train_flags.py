"""train.py's flags: each declared once with its kind, and everything that sorts flags derived from those kinds."""
import inspect
import re
import shutil
from pathlib import Path

import yaml

from rsg_timm import hub
from rsg_timm.model_card import _ACTS_WHEN
from rsg_timm.models import RSGMixin
from rsg_timm.train_flags import FlagKind, build_train_parser, flag_names, published_args, restored_on_resume, \
    train_flags

PATH_METAVARS = ('FILE', 'DIR', 'PATH', 'RUN', 'CHECKPOINT')


def test_a_flag_whose_metavar_is_a_path_is_declared_a_path():
    """A new --something-dir FILE flag declared without path=True would be published; the usage line says which flags
    take a path."""
    usage = build_train_parser().format_usage()
    by_metavar = {name.replace('-', '_') for name, metavar in re.findall(r'\[--([\w-]+) ([A-Z_]+)\]', usage)
                  if metavar in PATH_METAVARS}
    declared = {name for name, flag in train_flags().items() if flag.path}
    assert {'data_dir', 'fork', 'resume', 'pretrained_path', 'initial_checkpoint', 'output'} <= by_metavar
    assert by_metavar == declared


def test_kinds_decide_what_is_restored_and_published():
    machine = set(flag_names(FlagKind.MACHINE))
    assert {'device', 'workers', 'output', 'resume', 'log_interval', 'no_progress'} <= machine
    assert set(restored_on_resume()) == set(train_flags()) - machine
    assert 'fork' in restored_on_resume()  # a resumed fork keeps its origin in args.yaml and on the card
    args = {name: f'value of {name}' for name in train_flags()}
    published = published_args(dict(args, not_a_flag_any_more='/home/me'))
    assert set(published) == {n for n, f in train_flags().items() if f.kind is not FlagKind.MACHINE and not f.path}
    assert {'model', 'lr', 'rsg_strength', 'val_split', 'channels_last'} <= set(published)


def test_rsg_flags_and_their_help_come_from_the_model():
    defaults = inspect.signature(RSGMixin.from_backbone).parameters
    assert set(flag_names(FlagKind.RSG)) == {n for n in defaults if n.startswith('rsg_') and n != 'rsg_init'}
    text = build_train_parser().format_help()
    assert f'model default {defaults["rsg_n_center"].default})' in text


def test_card_conditions_name_recipe_flags():
    assert set(_ACTS_WHEN) <= set(flag_names(FlagKind.RECIPE, FlagKind.RSG))


def test_a_published_run_holds_no_path_of_the_machine(trained_run, tmp_path):
    """Every path-valued flag set to a path of this machine: neither the published args.yaml nor the card holds it."""
    run_dir = tmp_path / 'run'
    shutil.copytree(trained_run.dir, run_dir)
    args = yaml.safe_load((run_dir / 'args.yaml').read_text())
    secret = '/home/someone/private'
    paths = [name for name, flag in train_flags().items() if flag.path]
    args.update({name: f'{secret}/{name}.pth' for name in paths})
    (run_dir / 'args.yaml').write_text(yaml.safe_dump(args, sort_keys=False))
    staged = Path(hub.push_to_hub(run_dir, 'me/tiny', dry_run_dir=tmp_path / 'staged'))
    for name in ('args.yaml', 'README.md'):
        assert secret not in (staged / name).read_text(), name
    assert not set(paths) & set(yaml.safe_load((staged / 'args.yaml').read_text()))
    assert '| `--fork` | fork.pth |' in (staged / 'README.md').read_text()  # a recipe path by its file name
