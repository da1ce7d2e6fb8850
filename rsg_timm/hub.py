"""Publish a train.py run on the Hugging Face Hub, and ship it in the model zoo: transport only.

``python -m rsg_timm.hub push RUN_DIR --repo-id ORG/NAME [--private] [--dry-run OUT_DIR]`` stages the run with
:func:`rsg_timm.publish.export_run` (the backbone export, a model card and the run's records) in a temporary folder,
then uploads that folder with ``huggingface_hub.HfApi``. ``--dry-run OUT_DIR`` writes the staged files to OUT_DIR
(new or empty, so nothing there is overwritten and it holds exactly what a push uploads) instead and touches no
network.
The result loads with ``timm.create_model('hf-hub:ORG/NAME', pretrained=True)`` and
``python validate.py --model hf-hub:ORG/NAME``.

``python -m rsg_timm.hub add-pretrained RUN_DIR --tag TAG --hf-hub-id ORG/NAME`` copies the backbone into the
package's zoo (:func:`rsg_timm.zoo_authoring.add_pretrained`), so it loads as ``timm.create_model('<arch>.<TAG>',
pretrained=True)``.
"""
import argparse
import json
import logging
import os
import tempfile
from typing import List, Optional, Union

from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import httpx  # httpx: the client's HTTP library (huggingface_hub >= 2)

from .hub_repo_id import check_repo_id
from .models.pretrained import PRETRAINED_DIR, TAGS_FILE
from .publish import export_run
from .zoo_authoring import add_pretrained

__all__ = ['push_to_hub']

_logger = logging.getLogger(__name__)

_DEFAULT_COMMIT_MESSAGE = 'Add rsg_timm model'

PathLike = Union[str, os.PathLike]


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

    Raises:
        ConnectionError: the Hub (``HF_ENDPOINT``, huggingface.co by default) cannot be reached, naming it.
        PermissionError: the Hub refused the token (none, or no write access to the namespace).
    """
    check_repo_id(repo_id)
    if dry_run_dir is not None:
        if os.path.exists(dry_run_dir) and not os.path.isdir(dry_run_dir):
            raise ValueError(f'--dry-run {dry_run_dir} is a file: pass a new or empty folder to stage into')
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
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=commit_message)
        except (httpx.TransportError, OfflineModeIsEnabled) as e:
            raise ConnectionError(
                f'cannot reach the Hub at {api.endpoint} to push {repo_id} ({e}); check the network, HF_ENDPOINT and '
                f'HF_HUB_OFFLINE, or stage the files with --dry-run OUT_DIR') from None
        except HfHubHTTPError as e:
            if e.response.status_code not in (401, 403):
                raise
            raise PermissionError(
                f'the Hub at {api.endpoint} refused to push {repo_id} ({e.response.status_code}: '
                f'{e.server_message or "no write access"}); log in with `hf auth login` or pass --token, with write '
                f'access to {repo_id.split("/")[0]}') from None
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
        check_repo_id(args.hf_hub_id, '--hf-hub-id')
    name, entry = add_pretrained(args.run_dir, args.tag, args.hf_hub_id, notes=args.note, replace=args.replace)
    return f'{name} added to {PRETRAINED_DIR / TAGS_FILE}:\n{json.dumps(entry, indent=2)}'


if __name__ == '__main__':
    from timm.utils import setup_default_logging

    from .cli import run_cli

    setup_default_logging()
    print(run_cli(main))
