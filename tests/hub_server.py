"""A Hugging Face Hub stand-in on the loopback address, for running the real ``huggingface_hub`` client offline.

It answers the few routes that creating a model repo, committing files to it and downloading them use: repo
creation, repo info, the model card's metadata check (its YAML front matter must parse to a mapping), the
pre-upload check (every file goes inline, as a "regular" git blob, so no LFS or Xet transfer), the NDJSON commit,
and ``resolve/<revision>/<file>`` with the headers ``hf_hub_download`` reads (commit, ETag, size). Repos live in
memory; writes need a token (any ``Authorization: Bearer ...``), as on the Hub. The client's optional registry
fetch answers 404; any other route answers 501 and is recorded, so a client that starts to need more fails loudly.
Point a client at it with ``HF_ENDPOINT=<hub.endpoint>`` set before ``huggingface_hub`` is imported (its constants
are read at import).
"""
import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import unquote, urlsplit

import yaml

_REPO = r'(?P<repo>[^/]+/[^/]+)'
_CREATE = re.compile(r'^/api/repos/create$')
_VALIDATE_YAML = re.compile(r'^/api/validate-yaml$')
_PREUPLOAD = re.compile(rf'^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$')
_COMMIT = re.compile(rf'^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$')
_INFO = re.compile(rf'^/api/models/{_REPO}(/revision/(?P<rev>[^/]+))?$')
_RESOLVE = re.compile(rf'^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$')
_OPTIONAL = ('/api/agent-harnesses',)  # best effort in the client: it goes on without an answer
_UNAUTHORIZED = (401, {}, {'error': 'Invalid credentials in Authorization header'})


class _Repo:
    def __init__(self):
        self.files: Dict[str, bytes] = {}
        self.commit = '0' * 40


class LocalHub:
    """The stand-in server: ``with LocalHub() as hub:`` serves on ``hub.endpoint`` until the block ends.

    ``hub.files(ORG/NAME)`` gives a repo's files; ``hub.unhandled`` lists the requests it could not answer.
    """

    def __init__(self):
        self.repos: Dict[str, _Repo] = {}
        self.unhandled: List[str] = []
        self._lock = threading.Lock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f'http://{host}:{port}'

    def files(self, repo_id: str) -> Dict[str, bytes]:
        return dict(self.repos[repo_id].files)

    def __enter__(self) -> 'LocalHub':
        self._server = ThreadingHTTPServer(('127.0.0.1', 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- routes: each returns (status, headers, body)

    def create_repo(self, payload: dict):
        repo_id = f'{payload["organization"]}/{payload["name"]}'
        with self._lock:
            if repo_id in self.repos:
                return 409, {}, {'error': 'You already created this model repo'}
            self.repos[repo_id] = _Repo()
        return 200, {}, {'url': f'{self.endpoint}/{repo_id}', 'name': repo_id}

    def validate_yaml(self, payload: dict):
        """The client sends the whole card; the metadata is its front matter, between the first two ``---``."""
        parts = payload['content'].split('---\n', 2)
        if len(parts) < 3 or parts[0]:
            return 400, {}, {'errors': [{'message': 'no YAML front matter'}]}
        try:
            meta = yaml.safe_load(parts[1])
        except yaml.YAMLError as e:
            return 400, {}, {'errors': [{'message': f'invalid YAML: {e}'}]}
        if not isinstance(meta, dict):
            return 400, {}, {'errors': [{'message': 'the metadata must be a mapping'}]}
        return 200, {}, {'errors': [], 'warnings': []}

    def preupload(self, repo_id: str, payload: dict):
        if repo_id not in self.repos:
            return 404, {'X-Error-Code': 'RepoNotFound'}, {'error': 'Repository not found'}
        files = [dict(path=f['path'], uploadMode='regular', shouldIgnore=False) for f in payload['files']]
        return 200, {}, {'files': files}

    def commit(self, repo_id: str, body: bytes):
        if repo_id not in self.repos:
            return 404, {'X-Error-Code': 'RepoNotFound'}, {'error': 'Repository not found'}
        added = {}
        for line in body.splitlines():
            item = json.loads(line)
            if item['key'] == 'file':
                added[item['value']['path']] = base64.b64decode(item['value']['content'])
            elif item['key'] != 'header':  # LFS pointers, deletions: never asked for by a "regular" pre-upload
                return 400, {}, {'error': f'unsupported commit operation {item["key"]}'}
        repo = self.repos[repo_id]
        with self._lock:
            repo.files.update(added)
            repo.commit = hashlib.sha1(repo.commit.encode() + json.dumps(sorted(added)).encode()).hexdigest()
        return 200, {}, {'commitUrl': f'{self.endpoint}/{repo_id}/commit/{repo.commit}', 'commitOid': repo.commit,
                         'pullRequestUrl': None}

    def info(self, repo_id: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {'X-Error-Code': 'RepoNotFound'}, {'error': 'Repository not found'}
        return 200, {}, {'id': repo_id, 'sha': repo.commit, 'private': False,
                         'siblings': [{'rfilename': name} for name in sorted(repo.files)]}

    def resolve(self, repo_id: str, revision: str, path: str):
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {'X-Error-Code': 'RepoNotFound'}, {'error': 'Repository not found'}
        if revision not in ('main', repo.commit):
            return 404, {'X-Error-Code': 'RevisionNotFound'}, {'error': 'Revision not found'}
        if path not in repo.files:
            return 404, {'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': repo.commit}, {'error': 'Entry not found'}
        data = repo.files[path]
        headers = {'X-Repo-Commit': repo.commit, 'ETag': f'"{hashlib.sha1(data).hexdigest()}"',
                   'Content-Type': 'application/octet-stream'}
        return 200, headers, data


def _handler_for(hub: LocalHub) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args) -> None:  # quiet: pytest shows failures, not access logs
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get('Content-Length', 0)))

        def _reply(self, status: int, headers: dict, body, head: bool = False) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            if not isinstance(body, bytes):
                self.send_header('Content-Type', 'application/json')
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _unhandled(self, head: bool = False) -> None:
            hub.unhandled.append(f'{self.command} {self.path}')
            self._reply(501, {}, {'error': f'not implemented by the test hub: {self.command} {self.path}'}, head)

        def _get(self, head: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            if path in _OPTIONAL:
                return self._reply(404, {}, {'error': 'not served by the test hub'}, head)
            match = _INFO.match(path)
            if match:
                return self._reply(*hub.info(match['repo']), head=head)
            match = _RESOLVE.match(path)
            if match is None:
                return self._unhandled(head)
            self._reply(*hub.resolve(match['repo'], match['rev'], match['path']), head=head)

        def do_HEAD(self) -> None:
            self._get(head=True)

        def do_GET(self) -> None:
            self._get(head=False)

        def do_POST(self) -> None:
            path, body = unquote(urlsplit(self.path).path), self._body()
            if not self.headers.get('Authorization', '').startswith('Bearer '):
                return self._reply(*_UNAUTHORIZED)
            if _CREATE.match(path):
                return self._reply(*hub.create_repo(json.loads(body)))
            if _VALIDATE_YAML.match(path):
                return self._reply(*hub.validate_yaml(json.loads(body)))
            match = _PREUPLOAD.match(path)
            if match:
                return self._reply(*hub.preupload(match['repo'], json.loads(body)))
            match = _COMMIT.match(path)
            if match:
                return self._reply(*hub.commit(match['repo'], body))
            self._unhandled()

    return Handler
