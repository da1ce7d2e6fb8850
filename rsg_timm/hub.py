"""Publish a train.py run on the Hugging Face Hub, and ship it in the model zoo.

``python -m rsg_timm.hub push RUN_DIR --repo-id ORG/NAME [--private] [--dry-run OUT_DIR]`` stages the run's exported
backbone (``model.safetensors`` + timm's ``config.json`` with class counts and label names; re-exported from
``last.pth.tar`` when the run has none), a model card ``README.md`` and the run's records (``args.yaml`` without
machine-specific paths, ``summary.csv``, ``per_class.csv``) in a temporary folder, then uploads that folder with
``huggingface_hub.HfApi``. ``--dry-run OUT_DIR`` writes the staged files to OUT_DIR (new or empty, so nothing there is
overwritten and it holds exactly what a push uploads) instead and touches no network.
The result loads with ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` and
``python validate.py --model hf-hub:ORG/NAME``.

``python -m rsg_timm.hub add-pretrained RUN_DIR --tag TAG --hf-hub-id ORG/NAME`` copies the backbone into the
package's zoo (:mod:`rsg_timm.models.pretrained`), so it loads as ``timm.create_model('<arch>.<TAG>',
pretrained=True)``. (It lives here rather than as ``python -m rsg_timm.models.pretrained``: the package imports that
module itself, and running an already imported module with ``-m`` executes it twice.)
"""
import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Union

import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open
from timm.data import resolve_data_config
from timm.models import model_entrypoint

from .checkpoint import create_eval_model, load_training_checkpoint
from .export import save_pretrained
from .model_card import create_model_card
from .run_folder import read_run
from .models.pretrained import PRETRAINED_DIR, add_pretrained

__all__ = ['export_run', 'push_to_hub']

_logger = logging.getLogger(__name__)

# args.yaml keys that describe the machine a run was trained on, not its recipe; left out of the published copy.
_LOCAL_ARGS = ('data_dir', 'output', 'experiment', 'resume', 'no_resume_opt', 'device', 'workers', 'no_progress',
               'log_interval', 'checkpoint_hist', 'dataset_download')
_EXPORT_FILES = ('config.json', 'model.safetensors')
_RECORD_FILES = ('summary.csv', 'per_class.csv', 'curves.png', 'per_class.png')  # figures: [plot] extra
_DEFAULT_COMMIT_MESSAGE = 'Add rsg_timm model'
_PACKAGE = __package__  # 'rsg_timm', also under python -m

PathLike = Union[str, os.PathLike]


def _check_repo_id(repo_id: str, flag: str = '--repo-id') -> None:
    """The Hub's own rules, so a dry run refuses what a push would."""
    if repo_id.count('/') != 1 or not all(repo_id.split('/')):
        raise ValueError(f'{flag} {repo_id!r}: pass ORG/NAME (timm loads hf-hub:ORG/NAME)')
    validate_repo_id(repo_id)  # HFValidationError, a ValueError naming the rule


def _check_safetensors(path: Path) -> None:
    """Fail unless ``path`` is a readable safetensors file (a renamed pickle would fail only when the tag loads)."""
    try:
        with safe_open(str(path), framework='pt') as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        raise ValueError(f'{path} is not a safetensors file ({e}); re-export the run (train.py writes it, or '
                         f'`python -m rsg_timm.hub push RUN_DIR --repo-id ORG/NAME --dry-run DIR`)') from None


def _export_backbone(run_dir: Path, out_dir: Path) -> None:
    """Copy the run's export, or write one from ``last.pth.tar`` when training stopped before exporting."""
    if all((run_dir / name).is_file() for name in _EXPORT_FILES):
        for name in _EXPORT_FILES:
            shutil.copyfile(run_dir / name, out_dir / name)
        return
    checkpoint = run_dir / 'last.pth.tar'
    if not checkpoint.is_file():
        raise FileNotFoundError(f'{str(run_dir)!r} has neither an exported backbone (config.json + model.safetensors) '
                                f'nor last.pth.tar to export one from; is it a train.py run folder?')
    backbone = load_training_checkpoint(str(checkpoint)).get('backbone')
    if not backbone:
        raise FileNotFoundError(f'{str(checkpoint)!r} does not record its backbone; it was not written by train.py')
    model, class_counts, label_names = create_eval_model(backbone, str(checkpoint))
    _logger.info(f'{run_dir} has no export; exporting the backbone of {checkpoint}')
    save_pretrained(model, out_dir, class_counts=class_counts, label_names=label_names,
                    data_config=resolve_data_config({}, model=model))


def export_run(run_dir: PathLike, out_dir: PathLike, *, repo_id: str = 'ORG/NAME') -> Path:
    """Stage what ``push`` uploads for a run into ``out_dir``: the backbone export, README.md and the run records.

    Args:
        run_dir: a train.py run folder (``output/train/<experiment>``).
        out_dir: the staging folder, created if needed; it must not be the run folder.
        repo_id: the Hub repo the card's loading examples name.

    Returns:
        The staging folder.
    """
    run = read_run(run_dir)
    out_dir = Path(out_dir)
    if out_dir.resolve() == run.run_dir.resolve():
        raise ValueError(f'stage into another folder than the run itself ({out_dir}); it would replace args.yaml')
    out_dir.mkdir(parents=True, exist_ok=True)
    _export_backbone(run.run_dir, out_dir)
    config = json.loads((out_dir / 'config.json').read_text())
    needs_plugin = model_entrypoint(config['architecture']).__module__.startswith(_PACKAGE)
    (out_dir / 'README.md').write_text(create_model_card(run, config, repo_id, needs_plugin), encoding='utf-8')
    recipe = {k: v for k, v in run.args.items() if k not in _LOCAL_ARGS}
    (out_dir / 'args.yaml').write_text(yaml.safe_dump(recipe, sort_keys=False))
    for name in _RECORD_FILES:
        if (run.run_dir / name).is_file():
            shutil.copyfile(run.run_dir / name, out_dir / name)
    return out_dir


def push_to_hub(
        run_dir: PathLike,
        repo_id: str,
        *,
        private: bool = False,
        dry_run_dir: Optional[PathLike] = None,
        token: Optional[str] = None,
        commit_message: str = _DEFAULT_COMMIT_MESSAGE,
) -> str:
    """Upload a run's backbone, model card and records to the Hub repo ``repo_id`` (created if needed).

    The files are staged first, so a run folder that cannot be published fails before anything is created.

    Args:
        run_dir: a train.py run folder.
        repo_id: ``ORG/NAME``.
        private: create the repo private (an existing repo keeps its visibility).
        dry_run_dir: write the staged files here and upload nothing.
        token: Hub token; the stored login (``hf auth login``) by default.
        commit_message: message of the upload commit.

    Returns:
        The repo URL, or the dry-run folder.
    """
    _check_repo_id(repo_id)
    if dry_run_dir is not None:
        if os.path.isdir(dry_run_dir) and os.listdir(dry_run_dir):
            raise ValueError(f'--dry-run {dry_run_dir} is not empty: stage into another folder, a new or empty one, so '
                             f'that nothing there is overwritten and it holds exactly what a push uploads')
        out = export_run(run_dir, dry_run_dir, repo_id=repo_id)
        files = ', '.join(f'{name} ({os.path.getsize(out / name)} bytes)' for name in sorted(os.listdir(out)))
        _logger.info(f'Dry run: a push to {repo_id} uploads exactly these files, staged in {out}: {files}')
        return str(out)
    with tempfile.TemporaryDirectory(prefix='rsg-timm-hub-') as staging:
        export_run(run_dir, staging, repo_id=repo_id)
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message)
    _logger.info(f'Pushed {run_dir} to {url}')
    return str(url)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='python -m rsg_timm.hub', description=__doc__.split('\n\n')[0])
    commands = parser.add_subparsers(dest='command', required=True)
    push = commands.add_parser('push', help='upload a run folder to a Hub model repo')
    push.add_argument('run_dir', metavar='RUN_DIR', help='train.py run folder, e.g. output/train/<experiment>')
    push.add_argument('--repo-id', required=True, metavar='ORG/NAME')
    push.add_argument('--private', action='store_true', help='create the repo private')
    push.add_argument('--dry-run', default=None, metavar='OUT_DIR', help='write the staged files here, upload nothing')
    push.add_argument('--token', default=None, help='Hub token (default: the stored login)')
    push.add_argument('--commit-message', default=_DEFAULT_COMMIT_MESSAGE)
    zoo = commands.add_parser('add-pretrained', help="ship a run's backbone as the pretrained tag <arch>.TAG")
    zoo.add_argument('run_dir', metavar='RUN_DIR', help='train.py run folder or export folder')
    zoo.add_argument('--tag', required=True, help='timm-style tag, e.g. ldam_drw_rsg_cifar10_lt_r100')
    zoo.add_argument('--hf-hub-id', default=None, metavar='ORG/NAME', help='the published copy (see push)')
    zoo.add_argument('--note', action='append', default=[], help='an extra note for the tag (repeatable)')
    zoo.add_argument('--replace', action='store_true', help='overwrite an existing tag of that name')
    return parser


def main(argv: Optional[List[str]] = None) -> str:
    args = _build_parser().parse_args(argv)
    if args.command == 'push':
        return push_to_hub(args.run_dir, args.repo_id, private=args.private, dry_run_dir=args.dry_run,
                           token=args.token, commit_message=args.commit_message)
    if args.hf_hub_id is not None:
        _check_repo_id(args.hf_hub_id, '--hf-hub-id')
    if Path(args.run_dir, 'model.safetensors').is_file():
        _check_safetensors(Path(args.run_dir, 'model.safetensors'))
    name, entry = add_pretrained(args.run_dir, args.tag, args.hf_hub_id, notes=args.note, replace=args.replace)
    return f'{name} added to {PRETRAINED_DIR / "tags.json"}:\n{json.dumps(entry, indent=2)}'


if __name__ == '__main__':
    from timm.utils import setup_default_logging

    from .cli import run_cli

    setup_default_logging()
    print(run_cli(main))
