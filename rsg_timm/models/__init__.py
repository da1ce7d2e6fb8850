"""Model definitions; importing this package registers ``cifar_resnet*`` and every ``rsg_*`` model with timm.

``cifar_resnet`` must be imported first: the RSG registry wraps every backbone registered at that point.
"""
from .state_dict import CheckpointError, OfficialHead, check_state_dict_fits, fill_fresh_rsg, find_official_head, \
    unwrap_checkpoint
from .cifar_resnet import BasicBlock, CifarResNet, NormedLinear, checkpoint_filter_fn
from .rsg_model import RSGCifarResNet, RSGMixin, RSGOutput, RSGResNet, backbone_arch, backbone_stage_names, \
    check_rsg_family, is_rsg_model, rsg_model_defaults
from .classifier import COSINE_CLASSIFIER_KEY, CosineHead, arch_cosine_head, cosine_to_linear, create_cosine_model, \
    has_cosine_classifier, linear_to_cosine, model_cosine_head, set_cosine_classifier, supports_cosine_classifier

__all__ = [
    'CheckpointError', 'OfficialHead', 'check_state_dict_fits', 'fill_fresh_rsg', 'find_official_head',
    'unwrap_checkpoint',
    'BasicBlock', 'CifarResNet', 'NormedLinear', 'checkpoint_filter_fn',
    'RSGCifarResNet', 'RSGMixin', 'RSGOutput', 'RSGResNet', 'backbone_arch', 'backbone_stage_names',
    'check_rsg_family', 'is_rsg_model',
    'COSINE_CLASSIFIER_KEY', 'CosineHead', 'arch_cosine_head', 'model_cosine_head', 'cosine_to_linear',
    'create_cosine_model', 'has_cosine_classifier', 'linear_to_cosine',
    'set_cosine_classifier', 'supports_cosine_classifier',
]
