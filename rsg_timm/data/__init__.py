"""Long-tailed datasets, class profiles, samplers, transforms and the loaders that batch them."""
from .cifar_lt import ArrayLTDataset, CifarLT
from .demo import DemoLT
from .factory import create_lt_dataset, cuts_to_profile, default_imb_type, list_lt_datasets
from .imbalance import long_tail_counts, select_long_tail
from .loader import TensorBatchLoader, create_lt_loader
from .list_lt import FileLTDataset, create_folder_lt, create_list_lt, read_list_file
from .samplers import (
    ClassBalancedSampler, InstanceSampler, LTSampler, ProgressiveSampler, ShardSampler, SqrtSampler, create_sampler,
    list_samplers, register_sampler, sampler_kwargs,
)
from .transforms import CifarBatchTransform, build_transform, default_mean_std

__all__ = [
    'ArrayLTDataset', 'CifarLT', 'DemoLT', 'FileLTDataset',
    'create_lt_dataset', 'cuts_to_profile', 'default_imb_type', 'list_lt_datasets', 'create_lt_loader', 'ShardSampler',
    'create_list_lt', 'create_folder_lt', 'read_list_file',
    'long_tail_counts', 'select_long_tail',
    'LTSampler', 'InstanceSampler', 'ClassBalancedSampler', 'SqrtSampler', 'ProgressiveSampler',
    'create_sampler', 'list_samplers', 'register_sampler', 'sampler_kwargs',
    'CifarBatchTransform', 'TensorBatchLoader', 'build_transform', 'default_mean_std',
]
