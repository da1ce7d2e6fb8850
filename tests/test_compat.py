"""rsg_timm.compat: the package's only use of timm's and torch's private API, and what each item promises."""
import argparse
import ast
import inspect
import os

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import model_entrypoint
from timm.utils import CheckpointSaver

from helpers import REPO_DIR, package_sources
from rsg_timm.compat import UNANNOTATED_ENTRYPOINTS, CheckpointSaverHooks, assert_on_device, \
    entrypoint_model_class, switch_class

_UPSTREAM = ('torch', 'timm', 'argparse')


def _is_private(name: str) -> bool:
    return name.startswith('_') and not name.startswith('__')


def _upstream_private_attributes() -> set:
    """Underscore names that timm, torch and argparse objects rsg_timm uses or subclasses define."""
    objects = [timm.create_model('test_resnet'), CheckpointSaver, torch.Tensor, torch.optim.SGD, nn.Module,
               argparse.ArgumentParser, argparse.Namespace, argparse.Action, torch.utils.data.Sampler]
    return {name for obj in objects for name in dir(obj) if _is_private(name)}


def _private_uses(path: str, upstream_attrs: set) -> list:
    """``(line, name)`` of each private timm/torch/argparse name in ``path`` and each switch of ``__class__``."""
    tree = ast.parse(open(os.path.join(REPO_DIR, path), encoding='utf-8').read())
    upstream_aliases, uses = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split('.')[0] in _UPSTREAM:
                    upstream_aliases.add((alias.asname or alias.name).split('.')[0])
                    uses += [(node.lineno, alias.name) for part in alias.name.split('.') if _is_private(part)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] in _UPSTREAM:
            uses += [(node.lineno, node.module) for part in node.module.split('.') if _is_private(part)]
            uses += [(node.lineno, alias.name) for alias in node.names if _is_private(alias.name)]
            upstream_aliases.update(alias.asname or alias.name for alias in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if node.attr in upstream_attrs or (isinstance(root, ast.Name) and root.id in upstream_aliases):
                uses.append((node.lineno, node.attr))
        elif isinstance(node, ast.Assign):
            uses += [(node.lineno, '__class__') for target in node.targets
                     if isinstance(target, ast.Attribute) and target.attr == '__class__']
    return uses


def test_no_private_api_outside_compat():
    upstream_attrs = _upstream_private_attributes()
    found = {path: uses for path in package_sources() if path != os.path.join('rsg_timm', 'compat.py')
             for uses in [_private_uses(path, upstream_attrs)] if uses}
    assert found == {}, 'move these into rsg_timm/compat.py, or use public API'


def test_the_private_api_check_sees_each_kind_of_use(tmp_path, monkeypatch):
    source = ('import torch\nfrom timm.models._features import feature_take_indices\n'
              'from timm.models.regnet import _filter_fn\n'
              'class Saver:\n    def save(self):\n        self._duplicate(1, 2)\n'
              'def f(model, cls):\n    torch._assert_async(True)\n    model.__class__ = cls\n'
              '    return model._model_args\n')
    (tmp_path / 'mod.py').write_text(source)
    monkeypatch.setattr('test_compat.REPO_DIR', str(tmp_path))
    names = [name for _, name in _private_uses('mod.py', _upstream_private_attributes())]
    assert sorted(names) == sorted(['timm.models._features', '_filter_fn', '_duplicate', '_assert_async',
                                    '__class__', '_model_args'])


class _RecordingSaver(CheckpointSaverHooks):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def write_checkpoint(self, save_path, epoch, metric=None):
        self.calls.append('write_checkpoint')
        super().write_checkpoint(save_path, epoch, metric)

    def replace_file(self, src, dst):
        self.calls.append('replace_file')
        super().replace_file(src, dst)

    def duplicate_file(self, src, dst):
        self.calls.append('duplicate_file')
        super().duplicate_file(src, dst)


def test_timm_s_saver_writes_through_the_public_hooks(tmp_path):
    model = nn.Linear(2, 2)
    saver = _RecordingSaver(model, torch.optim.SGD(model.parameters(), lr=0.1), checkpoint_dir=str(tmp_path),
                            max_history=1)
    saver.save_checkpoint(0, metric=1.0)  # timm's own: tmp, last, checkpoint-0, model_best
    assert saver.calls == ['write_checkpoint', 'replace_file', 'duplicate_file', 'duplicate_file']
    assert saver.checkpoint_path(0) == str(tmp_path / 'checkpoint-0.pth.tar')
    saver.discard_worst_checkpoints(1)
    assert saver.checkpoint_files == [] and not os.path.exists(saver.checkpoint_path(0))
    saver.duplicate_file(str(tmp_path / 'last.pth.tar'), saver.checkpoint_path(3))
    saver.track_checkpoint(saver.checkpoint_path(3), 3, 2.0)
    assert (saver.best_epoch, saver.checkpoint_files) == (3, [(saver.checkpoint_path(3), 2.0)])


def test_assert_on_device_fails_on_a_false_condition():
    assert_on_device(torch.tensor(True), 'fine')
    with pytest.raises(RuntimeError, match='labels out of range'):
        assert_on_device(torch.tensor(False), 'labels out of range')


def test_switch_class_only_to_a_subclass():
    class Wider(nn.Linear):
        pass

    layer = nn.Linear(2, 2)
    assert type(switch_class(layer, Wider)) is Wider
    with pytest.raises(TypeError, match='does not subclass'):
        switch_class(nn.Conv2d(1, 1, 1), Wider)


@pytest.mark.parametrize('arch', sorted(UNANNOTATED_ENTRYPOINTS))
def test_unannotated_entrypoints_build_the_class_compat_names(arch):
    entrypoint = model_entrypoint(arch)
    assert inspect.signature(entrypoint).return_annotation is inspect.Signature.empty, 'timm annotates it now'
    with torch.device('meta'):
        assert type(entrypoint()) is UNANNOTATED_ENTRYPOINTS[arch]


def test_entrypoint_model_class_reads_the_annotation():
    assert entrypoint_model_class('test_convnext') is timm.models.convnext.ConvNeXt
    assert entrypoint_model_class('fastvit_t8') is None  # timm 1.0.31 declares nothing for it
