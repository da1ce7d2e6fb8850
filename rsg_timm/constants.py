"""Dataset statistics, long-tail split thresholds and checkpoint keys shared across the package."""

__all__ = [
    'CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD',
    'MANY_SHOT_ABOVE', 'FEW_SHOT_BELOW', 'CLASS_COUNTS_KEY', 'LABEL_NAMES_KEY', 'LOGIT_SCALE_KEY', 'RSG_KEY_PREFIX',
    'TRAIN_METRICS',
]

# The CIFAR statistics used by LDAM-DRW and the official RSG code (so recipes and checkpoints carry over).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# Many-shot: more than 100 training images; few-shot: fewer than 20; medium: 20..100 (Decoupling / OLTR). Both are
# exclusive bounds of their own group, hence ABOVE / BELOW.
MANY_SHOT_ABOVE = 100
FEW_SHOT_BELOW = 20

# Keys under which training class counts and label names travel in checkpoints and config.json.
CLASS_COUNTS_KEY = 'class_counts'
LABEL_NAMES_KEY = 'label_names'
# config.json key of the factor the training loss applied to the logits (LDAM's s); absent when it was 1. Calibrated
# probabilities are softmax(logit_scale * logits). A root key: timm's pretrained_cfg refuses unknown fields.
LOGIT_SCALE_KEY = 'logit_scale'
# State-dict keys of an RSG model's RSG module (the backbone's keys have no prefix).
RSG_KEY_PREFIX = 'rsg.'

# What the engine's train_one_epoch reports (summary.csv's train_* columns) besides the auxiliary loss terms a model
# names itself (an rsg_* model's cesc and mv).
TRAIN_METRICS = ('loss', 'ce', 'generated', 'top1', 'lr', 'images_per_sec')
