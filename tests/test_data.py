"""Datasets, class profiles, the demo set and transforms (rsg_timm.data)."""
import logging
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T

from rsg_timm.data import (
    CifarBatchTransform, CifarLT, DemoLT, TensorBatchLoader, build_transform, create_lt_dataset, create_lt_loader,
    create_sampler, list_lt_datasets, long_tail_counts, select_long_tail,
)
from rsg_timm.constants import CIFAR10_MEAN, CIFAR10_STD, FEW_SHOT_BELOW, MANY_SHOT_ABOVE

# Real CIFAR-10 (170 MB) is not part of the repository; these few tests run where a copy sits beside it.
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
needs_cifar = pytest.mark.skipif(
    not os.path.isfile(os.path.join(SHARED_DATA, 'cifar10_train.npz')),
    reason=f'real CIFAR-10 not found: needs {SHARED_DATA}/cifar10_train.npz and cifar10_test.npz')


@pytest.fixture(scope='module')
def cifar10():
    """The full CIFAR-10 arrays, loaded once: (train images, train labels, test images, test labels)."""
    with np.load(os.path.join(SHARED_DATA, 'cifar10_train.npz')) as tr, \
            np.load(os.path.join(SHARED_DATA, 'cifar10_test.npz')) as te:
        return tr['images'], tr['labels'], te['images'], te['labels']


# ---------------------------------------------------------------------------------------------------- profiles

def test_cifar10_exp_r100_counts():
    assert long_tail_counts(5000, 10, 'exp', 0.01) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.mark.parametrize('num_classes,n_max,imb_type,rho,total', [
    (10, 5000, 'exp', 10, 20431), (10, 5000, 'exp', 50, 13996), (10, 5000, 'exp', 100, 12406),
    (10, 5000, 'exp', 200, 11203), (10, 5000, 'step', 10, 27500), (10, 5000, 'step', 100, 25250),
    (100, 500, 'exp', 10, 19573), (100, 500, 'exp', 50, 12608), (100, 500, 'exp', 100, 10847),
    (100, 500, 'exp', 200, 9502), (100, 500, 'step', 10, 27500), (100, 500, 'step', 100, 25250),
])
def test_profile_totals(num_classes, n_max, imb_type, rho, total):
    assert sum(long_tail_counts(n_max, num_classes, imb_type, 1 / rho)) == total


def test_cifar100_exp_r100_details():
    counts = long_tail_counts(500, 100, 'exp', 0.01)
    assert counts[:5] == [500, 477, 455, 434, 415] and counts[-1] == 5
    assert (counts[34], counts[35], counts[69], counts[70]) == (102, 98, 20, 19)
    many = sum(n > MANY_SHOT_ABOVE for n in counts)
    few = sum(n < FEW_SHOT_BELOW for n in counts)
    assert (many, 100 - many - few, few) == (35, 35, 30)


def test_step_and_none_profiles():
    assert long_tail_counts(5000, 10, 'step', 0.01) == [5000] * 5 + [50] * 5
    assert long_tail_counts(500, 100, 'none', 0.01) == [500] * 100


def test_profile_bad_arguments():
    with pytest.raises(ValueError, match='exp'):
        long_tail_counts(10, 3, 'linear', 0.1)
    with pytest.raises(ValueError, match='1/rho'):
        long_tail_counts(10, 3, 'exp', 100)
    with pytest.raises(ValueError, match='first'):
        select_long_tail([0, 1], [1, 1], 'random')


def test_select_first_and_shuffle_semantics():
    targets = np.array([1, 0, 1, 0, 0, 1, 1, 0, 1])
    first = select_long_tail(targets, [2, 3], 'first')
    assert first.tolist() == [1, 3, 0, 2, 5]
    # LDAM-DRW: np.random.seed(0), then per class (ascending) np.random.shuffle of its indices, keep the first n_i.
    state = np.random.get_state()
    try:
        np.random.seed(0)
        expected = []
        for cls, n in enumerate([2, 3]):
            idx = np.where(targets == cls)[0]
            np.random.shuffle(idx)
            expected.extend(idx[:n])
    finally:
        np.random.set_state(state)
    assert select_long_tail(targets, [2, 3], 'shuffle').tolist() == expected


# ---------------------------------------------------------------------------------------------------- CIFAR-LT

@needs_cifar
def test_cifar10_lt_first_on_real_data(cifar10):
    x, y, _, _ = cifar10
    ds = CifarLT(SHARED_DATA, num_classes=10, train=True, imb_factor=0.01, imb_select='first')
    assert ds.class_counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert len(ds) == 12406 and np.bincount(ds.targets).tolist() == ds.class_counts
    assert ds.data.dtype == np.uint8 and ds.data.shape == (12406, 32, 32, 3)
    expected = np.concatenate([x[y == c][:n] for c, n in enumerate(ds.class_counts)])
    assert np.array_equal(ds.data, expected)
    assert ds.classes[0] == 'airplane'


@needs_cifar
def test_cifar10_lt_shuffle_and_test_split(cifar10):
    x, y, _, test_y = cifar10
    ds = CifarLT(SHARED_DATA, num_classes=10, train=True, imb_type='step', imb_factor=0.1, imb_select='shuffle')
    assert ds.class_counts == [5000] * 5 + [500] * 5
    keep = select_long_tail(y, ds.class_counts, 'shuffle')
    assert np.array_equal(ds.data, x[keep]) and ds.targets == y[keep].tolist()
    first = select_long_tail(y, ds.class_counts, 'first')
    assert not np.array_equal(keep, first)  # same counts, different images

    test = create_lt_dataset('cifar10_lt', SHARED_DATA, split='test', imb_factor=0.01)
    assert len(test) == 10000 and test.targets == test_y.tolist()
    assert test.class_counts == long_tail_counts(5000, 10, 'exp', 0.01)  # counts of the train profile
    img, label = test[0]
    assert isinstance(img, Image.Image) and label == 3


def test_cifar100_lt_torchvision_layout(tmp_path, monkeypatch):
    """torchvision's cifar-100-python pickles (tiny fakes; the md5 checks are bypassed)."""
    import pickle
    import torchvision.datasets.cifar as tv_cifar
    folder = tmp_path / 'cifar-100-python'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, per_class in (('train', 6), ('test', 2)):
        labels = np.tile(np.arange(100), per_class).tolist()
        data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        with open(folder / split, 'wb') as f:
            pickle.dump({'data': data, 'fine_labels': labels}, f)
    with open(folder / 'meta', 'wb') as f:
        pickle.dump({'fine_label_names': [f'c{i}' for i in range(100)]}, f)
    monkeypatch.setattr(tv_cifar, 'check_integrity', lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, '_check_integrity', lambda self: True)
    train = create_lt_dataset('cifar100_lt', str(tmp_path), split='train', imb_factor=0.01)
    # The profile asks for 500 ... 5; the fake has 6 per class, so only the tail classes are actually cut.
    assert train.class_counts[:3] == [6, 6, 6] and train.class_counts[-1] == 5
    assert train.classes[99] == 'c99' and train.data.shape[1:] == (32, 32, 3)
    test = create_lt_dataset('cifar100_lt', str(tmp_path), split='test', imb_factor=0.01)
    assert len(test) == 200 and test.class_counts == long_tail_counts(500, 100, 'exp', 0.01)


def test_cifar_missing_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='--data-dir'):
        create_lt_dataset('cifar10_lt', None)
    with pytest.raises(FileNotFoundError, match='dataset-download'):
        create_lt_dataset('cifar100_lt', str(tmp_path))
    with pytest.raises(ValueError, match='split'):
        create_lt_dataset('demo', split='holdout')


# ---------------------------------------------------------------------------------------------------- demo + factory

def test_demo_offline():
    ds = create_lt_dataset('demo')
    counts = long_tail_counts(300, 10, 'exp', 1 / 30)
    assert ds.class_counts == counts == [300, 205, 140, 96, 66, 45, 31, 21, 14, 10]
    assert len(ds) == sum(counts) == 928 and np.bincount(ds.targets).tolist() == counts
    assert min(counts) < FEW_SHOT_BELOW and max(counts) > MANY_SHOT_ABOVE  # all three shot groups exist
    test = create_lt_dataset('demo', is_training=False)
    assert len(test) == 1000 and np.bincount(test.targets).tolist() == [100] * 10
    assert test.class_counts == counts and test.classes == ds.classes and len(ds.classes) == 10
    img, label = DemoLT(train=True, transform=T.ToTensor())[0]
    assert img.shape == (3, 32, 32) and label == 0


@needs_cifar
def test_demo_matches_source(cifar10):
    x, y, tx, ty = cifar10
    ds = DemoLT(train=True)
    assert np.array_equal(ds.data, x[select_long_tail(y, ds.class_counts, 'first')])
    test = DemoLT(train=False)
    assert np.array_equal(test.data, tx[select_long_tail(ty, [100] * 10, 'first')])


def test_factory_unknown_name():
    assert {'demo', 'cifar10_lt', 'cifar100_lt', 'imagenet_lt', 'places_lt', 'inat2018', 'folder_lt'} \
        <= set(list_lt_datasets())
    with pytest.raises(ValueError, match='cifar10_lt'):
        create_lt_dataset('cifar10-lt')


# ---------------------------------------------------------------------------------------------------- list files

def _png(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _write_list(path, lines):
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


@pytest.fixture
def imagenet_lt_root(tmp_path):
    train = [(f'train/n{c:02d}/{i}.png', c) for c, n in enumerate([3, 2, 1]) for i in range(n)]
    test = [(f'val/{c}_{i}.png', c) for c in range(3) for i in range(2)]
    for rel, c in train + test:
        _png(str(tmp_path / rel), 40 * c)
    _write_list(tmp_path / 'ImageNet_LT_train.txt', [f'{p} {c}' for p, c in train])
    _write_list(tmp_path / 'ImageNet_LT_test.txt', [f'{p} {c}' for p, c in test])
    return tmp_path


def test_list_lt_train_and_test(imagenet_lt_root):
    root = str(imagenet_lt_root)
    train = create_lt_dataset('imagenet_lt', root, split='train')
    assert len(train) == 6 and train.class_counts[:3] == [3, 2, 1] and len(train.class_counts) == 1000
    img, label = train[3]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and label == 1
    test = create_lt_dataset('imagenet_lt', root, split='test', transform=T.ToTensor())
    assert test.targets == [0, 0, 1, 1, 2, 2] and test.class_counts == train.class_counts
    x, label = test[5]
    assert x.shape == (3, 8, 8) and label == 2 and torch.allclose(x, torch.full_like(x, 80 / 255))
    explicit = create_lt_dataset('imagenet_lt', root, split=str(imagenet_lt_root / 'ImageNet_LT_test.txt'))
    assert explicit.targets == test.targets


def test_list_lt_errors(imagenet_lt_root, tmp_path):
    root = str(imagenet_lt_root)
    _write_list(imagenet_lt_root / 'ImageNet_LT_val.txt', ['val/0_0.png 0', 'val/0_1.png'])
    with pytest.raises(ValueError, match=r'ImageNet_LT_val\.txt:2'):
        create_lt_dataset('imagenet_lt', root, split='val')
    _write_list(imagenet_lt_root / 'ImageNet_LT_val.txt', ['val/0_0.png 0', 'val/0_1.png 1000'])
    with pytest.raises(ValueError, match=r'ImageNet_LT_val\.txt:2: label 1000 is out of range'):
        create_lt_dataset('imagenet_lt', root, split='val')
    with pytest.raises(FileNotFoundError, match='--data-dir'):
        create_lt_dataset('places_lt', str(tmp_path / 'nowhere'))
    with pytest.raises(FileNotFoundError, match='Places_LT_train.txt'):
        create_lt_dataset('places_lt', root)
    with pytest.raises(ValueError, match='train'):
        create_lt_dataset('inat2018', root, split='holdout')
    # A test list without its train list: the dataset builds, the counts say what is missing.
    os.remove(imagenet_lt_root / 'ImageNet_LT_train.txt')
    test = create_lt_dataset('imagenet_lt', root, split='test')
    with pytest.raises(FileNotFoundError, match='ImageNet_LT_train.txt'):
        test.class_counts


def test_inat_test_is_val_list(tmp_path):
    _png(str(tmp_path / 'a.png'), 0)
    _write_list(tmp_path / 'iNaturalist18_val.txt', ['a.png 8141'])
    _write_list(tmp_path / 'iNaturalist18_train.txt', ['a.png 8141', 'a.png 8141'])
    ds = create_lt_dataset('inat2018', str(tmp_path), split='test')
    assert ds.targets == [8141] and ds.class_counts[-1] == 2 and sum(ds.class_counts) == 2


# ---------------------------------------------------------------------------------------------------- folder_lt

class _WorkerDraws(torch.utils.data.Dataset):
    """Each item is a draw from the generator of the worker that loads it."""
    transform = None

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.rand(()), index


def _worker_draws(epoch, rank=0):
    loader = create_lt_loader(_WorkerDraws(), dataset_name='folder_lt', batch_size=4, is_training=True, num_workers=1,
                              seed=0, rank=rank)
    loader.set_epoch(epoch)
    return next(iter(loader))[0]


def test_file_loader_workers_draw_from_the_seed_epoch_and_rank_alone():
    """A resumed epoch's workers draw what the straight run's did, whatever the global generator holds; each rank
    draws its own augmentations."""
    torch.manual_seed(1)
    first = _worker_draws(epoch=1)
    torch.manual_seed(2)
    assert torch.equal(_worker_draws(epoch=1), first)
    assert not torch.equal(_worker_draws(epoch=2), first)
    assert not torch.equal(_worker_draws(epoch=1, rank=1), first)


def test_workers_beyond_the_cores_are_clamped_with_a_note(tiny_folder, caplog):
    # configs sized for a large machine (workers: 8) run as they are on a 2-core one, without torch's warning
    cores = len(os.sched_getaffinity(0))
    dataset = create_lt_dataset('folder_lt', tiny_folder, split='val')
    with caplog.at_level(logging.INFO, logger='rsg_timm.data.loader'):
        loader = create_lt_loader(dataset, dataset_name='folder_lt', batch_size=4, is_training=False,
                                  num_workers=cores + 61)
    assert loader.num_workers == cores
    assert f'--workers {cores + 61}: this machine gives the process {cores} CPU cores' in caplog.text
    assert create_lt_loader(dataset, dataset_name='folder_lt', batch_size=4, is_training=False,
                            num_workers=1).num_workers == 1


def test_folder_lt(tmp_path, caplog):
    for c, name in enumerate(['cat', 'dog', 'eel']):
        for i in range(8):
            _png(str(tmp_path / 'train' / name / f'{i}.png'), c)
    for name in ['cat', 'eel']:  # 'dog' missing from val: labels must still follow the train classes
        _png(str(tmp_path / 'validation' / name / '0.png'), 0)
    full = create_lt_dataset('folder_lt', str(tmp_path))
    assert full.class_counts == [8, 8, 8] and full.classes == ['cat', 'dog', 'eel']
    lt = create_lt_dataset('folder_lt', str(tmp_path), imb_type='exp', imb_factor=0.25)
    assert lt.class_counts == [8, 4, 2] and len(lt) == 14
    assert [os.path.basename(p) for p, _ in lt.samples[8:12]] == ['0.png', '1.png', '2.png', '3.png']
    with caplog.at_level(logging.INFO, logger='rsg_timm.data.list_lt'):
        val = create_lt_dataset('folder_lt', str(tmp_path), split='test', imb_type='exp', imb_factor=0.25)
    assert val.targets == [0, 2] and val.class_counts == [8, 4, 2]
    assert f"folder_lt split 'test': reading {tmp_path / 'validation'} (there is no test/ folder)" in caplog.text
    with pytest.raises(FileNotFoundError, match='--data-dir'):
        create_lt_dataset('folder_lt', str(tmp_path / 'validation'))


# ---------------------------------------------------------------------------------------------------- transforms

def _reference_augment(images_nchw, generator, mean, std, padding=4, hflip=0.5):
    """Per-image torchvision reference consuming the generator in CifarBatchTransform's documented order."""
    n = len(images_nchw)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flip = torch.rand(n, generator=generator) < hflip
    out = []
    for img, (top, left), f in zip(images_nchw, offsets.tolist(), flip.tolist()):
        img = TF.crop(TF.pad(img, [padding]), top, left, 32, 32)
        if f:
            img = TF.hflip(img)
        out.append(TF.normalize(img.float() / 255, mean, std))
    return torch.stack(out)


def test_batch_augment_matches_per_image_reference():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 32, 32, 3), generator=g, dtype=torch.uint8)
    aug = CifarBatchTransform(CIFAR10_MEAN, CIFAR10_STD, is_training=True)
    out = aug(images, torch.Generator().manual_seed(7))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    ref = _reference_augment(images.permute(0, 3, 1, 2), torch.Generator().manual_seed(7), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    # NCHW input, same generator seed: same batch; another seed: another batch.
    torch.testing.assert_close(aug(images.permute(0, 3, 1, 2), torch.Generator().manual_seed(7)), out)
    assert not torch.equal(aug(images, torch.Generator().manual_seed(8)), out)


def test_batch_augment_handcrafted_flip_and_crop():
    cols = torch.arange(32, dtype=torch.uint8) * 8
    image = cols.view(1, 1, 1, 32).expand(1, 3, 32, 32).contiguous()  # pixel value encodes its column
    unit = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)  # normalisation becomes the identity on 0..255
    flipped = CifarBatchTransform(**unit, padding=0, hflip=1.0)(image)
    assert torch.equal(flipped[0, :, 0], cols.flip(0).float().expand(3, 32))
    kept = CifarBatchTransform(**unit, padding=0, hflip=0.0)(image)
    assert torch.equal(kept, image.float())
    g = torch.Generator().manual_seed(3)
    top, left = torch.randint(0, 9, (1, 2), generator=torch.Generator().manual_seed(3))[0].tolist()
    cropped = CifarBatchTransform(**unit, padding=4, hflip=0.0)(image, g)[0, 0]
    padded = torch.zeros(40, 40)
    padded[4:36, 4:36] = image[0, 0].float()
    assert torch.equal(cropped, padded[top:top + 32, left:left + 32])


def test_eval_transform_is_normalisation():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = CifarBatchTransform(CIFAR10_MEAN, CIFAR10_STD, is_training=False)(images)
    ref = (images.float() / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(
        1, 3, 1, 1)
    torch.testing.assert_close(out, ref)


def test_tensor_batch_loader():
    ds = create_lt_dataset('demo')
    sampler = create_sampler('class_balanced', ds.targets, num_samples=100, seed=1)
    aug = CifarBatchTransform()
    loader = TensorBatchLoader(ds.data, ds.targets, 32, sampler=sampler, augment=aug, channels_last=True)
    assert len(loader) == 4
    assert len(TensorBatchLoader(ds.data, ds.targets, 32, sampler=sampler, drop_last=True)) == 3
    loader.set_epoch(2)
    assert sampler.epoch == 2
    batches = list(loader)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    x, y = batches[0]
    assert x.shape == (32, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == [ds.targets[i] for i in list(sampler)[:32]]
    again = next(iter(loader))  # same epoch: same sampler draw and same augmentation
    torch.testing.assert_close(again[0], x)
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[0], x)
    plain = next(iter(TensorBatchLoader(ds.data, ds.targets, 2)))[0]
    torch.testing.assert_close(plain, torch.as_tensor(ds.data[:2]).permute(0, 3, 1, 2).float() / 255)


def test_build_transform():
    for name in ('demo', 'cifar100_lt'):  # in-memory data is augmented per batch (CifarBatchTransform)
        with pytest.raises(ValueError, match='CifarBatchTransform'):
            build_transform(name, is_training=True, data_config={})
    cfg = dict(input_size=(3, 48, 48), interpolation='bilinear', crop_pct=0.875, crop_mode='center',
               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    train = build_transform('imagenet_lt', True, cfg)
    assert any(isinstance(t, T.ColorJitter) for t in train.transforms)
    assert not any(isinstance(t, T.ColorJitter) for t in build_transform('places_lt', True, cfg).transforms)
    assert build_transform('inat2018', False, cfg)(Image.new('RGB', (64, 80))).shape == (3, 48, 48)
