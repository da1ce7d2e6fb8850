"""The Hub path with the real ``huggingface_hub`` client, against a Hub stand-in on 127.0.0.1 (tests/hub_server.py).

Each command runs in its own interpreter with ``HF_ENDPOINT`` in its environment, because huggingface_hub reads
the endpoint once, at import: push with ``python -m rsg_timm.hub push``, pull with ``timm.create_model('hf-hub:..')``,
evaluate with ``validate.py --model hf-hub:..``, and a zoo tag whose weights exist only at its ``hf_hub_id``.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

from rsg_timm import hub
from rsg_timm.zoo_authoring import add_pretrained

from helpers import REPO_DIR, load_script
from hub_server import LocalHub

REPO_ID = 'me/rsg_resnet32.tiny'
_TIMEOUT = 300  # seconds per command; a hang fails the test instead of the suite


def _env(endpoint: str, home: Path) -> dict:
    """A client environment: online, this endpoint, its own cache and no stored token (push passes --token)."""
    env = {k: v for k, v in os.environ.items() if k not in ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN')}
    return dict(env, HF_ENDPOINT=endpoint, HF_HUB_OFFLINE='0', HF_HOME=str(home), HF_HUB_ETAG_TIMEOUT='5',
                HF_HUB_DOWNLOAD_TIMEOUT='5', HF_HUB_DISABLE_XET='1', NO_PROXY='127.0.0.1,localhost',
                no_proxy='127.0.0.1,localhost', OMP_NUM_THREADS='1', PYTHONPATH=REPO_DIR)


def _push(run_dir, env, *extra) -> subprocess.CompletedProcess:
    return _run(['-m', 'rsg_timm.hub', 'push', str(run_dir), '--repo-id', REPO_ID, *extra], env)


def _run(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_DIR, env=env, capture_output=True, text=True,
                          timeout=_TIMEOUT)


def _logits(model) -> torch.Tensor:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def _result(stdout: str) -> dict:
    """validate.py's summary: the JSON it prints after ``--result``."""
    return json.loads(stdout.split('--result\n', 1)[1])


@pytest.fixture(scope='module')
def pushed(trained_run, tmp_path_factory):
    """The shared trained run pushed with the CLI to a fresh stand-in hub; yields (hub, client environment)."""
    with LocalHub() as local_hub:
        env = _env(local_hub.endpoint, tmp_path_factory.mktemp('hf_home'))
        proc = _push(trained_run.dir, env, '--token', 'hf_local_test')  # the stand-in takes any token
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().endswith(f'{local_hub.endpoint}/{REPO_ID}')
        yield local_hub, env
    assert local_hub.unhandled == []


def test_push_uploads_what_the_dry_run_stages(pushed, trained_run, tmp_path):
    local_hub, _ = pushed
    staged = Path(hub.push_to_hub(trained_run.dir, REPO_ID, dry_run_dir=tmp_path / 'staged'))
    assert local_hub.files(REPO_ID) == {p.name: p.read_bytes() for p in staged.iterdir()}


def test_pull_by_hf_hub_id_and_by_a_zoo_tag_without_its_file(pushed, trained_run, tmp_path):
    """``hf-hub:ORG/NAME`` and a zoo tag that has only an ``hf_hub_id`` both download the pushed weights."""
    _, env = pushed
    zoo = tmp_path / 'zoo'
    name, _ = add_pretrained(trained_run.dir, 'hub_only', REPO_ID, pretrained_dir=zoo)
    (zoo / f'{name}.safetensors').unlink()  # as in an install without the weights: only the hub copy is left
    script = textwrap.dedent(f'''
        import torch, timm, rsg_timm
        from rsg_timm.models.pretrained import load_pretrained_tags, resolve_zoo_tag
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        by_id = timm.create_model('hf-hub:{REPO_ID}', pretrained=True).eval()
        zoo = {str(zoo)!r}
        kwargs = resolve_zoo_tag('cifar_resnet32', dict(pretrained_cfg='hub_only'), tags=load_pretrained_tags(zoo),
                                 pretrained_dir=zoo)
        assert kwargs['pretrained_cfg'].get('file') is None and kwargs['pretrained_cfg']['hf_hub_id'] == {REPO_ID!r}
        by_tag = timm.create_model('cifar_resnet32', pretrained=True, **kwargs).eval()
        with torch.no_grad():
            torch.save(dict(by_id=by_id(x), by_tag=by_tag(x)), {str(tmp_path / 'logits.pt')!r})
    ''')
    proc = _run(['-c', script], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pulled = torch.load(tmp_path / 'logits.pt')
    expected = _logits(timm.create_model(f'local-dir:{trained_run.dir}', pretrained=True))
    torch.testing.assert_close(pulled['by_id'], expected, rtol=0, atol=0)
    torch.testing.assert_close(pulled['by_tag'], expected, rtol=0, atol=0)


def test_validate_a_hub_model_gives_the_local_numbers(pushed, trained_run, tiny_demo):
    _, env = pushed
    common = ['--data-dir', tiny_demo, '-b', '40']
    proc = _run(['validate.py', '--model', f'hf-hub:{REPO_ID}', *common], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_hub = _result(proc.stdout)
    from_run = load_script('validate.py').main(['--model', f'local-dir:{trained_run.dir}', *common])
    for key in ('top1', 'top5', 'many', 'medium', 'few', 'ece', 'num_images'):
        assert from_hub[key] == from_run[key], key


def _closed_port_endpoint() -> str:
    """A loopback address nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}'


def test_push_without_a_hub_is_one_clear_line(trained_run, tmp_path):
    env = _env(_closed_port_endpoint(), tmp_path / 'hf_home')
    proc = _push(trained_run.dir, env, '--token', 'hf_local_test')
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f'error: cannot reach the Hub at {env["HF_ENDPOINT"]} to push {REPO_ID} ([Errno 111] Connection refused); '
        f'check the network, HF_ENDPOINT and HF_HUB_OFFLINE, or stage the files with --dry-run OUT_DIR'], proc.stderr


def test_push_without_a_token_is_one_clear_line(pushed, trained_run):
    local_hub, env = pushed
    proc = _push(trained_run.dir, env)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (  # after the client's log of its requests
        f'error: the Hub at {local_hub.endpoint} refused to push {REPO_ID} (401: Invalid credentials in '
        f'Authorization header); log in with `hf auth login` or pass --token, with write access to me')


@pytest.mark.slow
def test_validate_without_a_hub_ends_in_one_clear_line(tiny_demo, tmp_path):
    """huggingface_hub retries an uncached download five times with backoff (about 25 s) and logs each retry."""
    env = _env(_closed_port_endpoint(), tmp_path / 'hf_home')
    proc = _run(['validate.py', '--model', f'hf-hub:{REPO_ID}', '--data-dir', tiny_demo], env)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith('error: An error happened while trying to locate the file '
                                                          'on the Hub'), proc.stderr[-3000:]
