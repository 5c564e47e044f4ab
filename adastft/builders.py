"""The objects a config describes, built at the edge: the classifier, its optimiser, the
waveform augmentation and mixup. Library classes take plain arguments; only these functions read
a :class:`Config`.

Example::

    model = build_model(cfg, num_classes=10)
    optimizer = build_optimizer(cfg, model)
"""

from __future__ import annotations

import torch
from torch import nn

from adastft.config import MIXUP_KEYS, SPEC_AUGMENT_KEYS, Config, arguments_for
from adastft.data import Augment, Mixup, SpecAugment
from adastft.layer import AdaSTFT, AdaSTFTBank
from adastft.model import AdaSTFTClassifier


def build_model(cfg: Config, num_classes: int) -> AdaSTFTClassifier:
    """The classifier a config describes (front-end learning switched off: train() sets it)."""
    layer_kwargs = cfg.stft.layer_kwargs(cfg.data.sample_rate)
    frontend = (
        AdaSTFT(**layer_kwargs) if cfg.model.n_frontends == 1 else AdaSTFTBank(cfg.model.n_frontends, **layer_kwargs)
    )
    d = cfg.data
    spec_augment = (
        SpecAugment(**arguments_for(SpecAugment, d, SPEC_AUGMENT_KEYS))
        if d.augment and (d.time_masks or d.freq_masks)
        else None
    )
    return AdaSTFTClassifier(
        frontend, num_classes, spec_augment=spec_augment, **arguments_for(AdaSTFTClassifier, cfg.model)
    )


def build_optimizer(cfg: Config, model: AdaSTFTClassifier) -> torch.optim.Optimizer:
    """AdamW or SGD at ``optim.lr``: the back end with ``optim.weight_decay``, the front end in its
    own group without decay (window and kernel at ``stft.lr`` when set, PCEN and the window's length at ``optim.lr``), frozen parameters included so that learning
    can be switched on later without a new optimiser."""
    groups = model.parameter_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.stft.lr)
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.optim.lr)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)


def build_augment(cfg: Config) -> nn.Module | None:
    """The waveform augmentation (noise, gain, delay), or None with ``data.augment=false``."""
    return Augment(**arguments_for(Augment, cfg.data)) if cfg.data.augment else None


def build_mixup(cfg: Config) -> Mixup | None:
    """Mixup at ``data.mixup_alpha``, or None when that is null or ``data.augment=false``."""
    d = cfg.data
    return Mixup(**arguments_for(Mixup, d, MIXUP_KEYS)) if d.augment and d.mixup_alpha is not None else None
