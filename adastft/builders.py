"""The objects a config describes, built at the edge: the classifier, its optimiser and the
waveform augmentation. Library classes take plain arguments; only these functions read a
:class:`Config`.

Example::

    model = build_model(cfg, num_classes=10)
    optimizer = build_optimizer(cfg, model)
"""

from __future__ import annotations

import torch
from torch import nn

from adastft.config import Config
from adastft.data import Augment, SpecAugment
from adastft.layer import AdaSTFT, AdaSTFTBank
from adastft.model import AdaSTFTClassifier


def build_model(cfg: Config, num_classes: int) -> AdaSTFTClassifier:
    """The classifier a config describes (front-end learning switched off: train() sets it)."""
    layer_kwargs = cfg.stft.layer_kwargs(cfg.data.sample_rate)
    frontend = AdaSTFT(**layer_kwargs) if cfg.model.n_frontends == 1 else AdaSTFTBank(cfg.model.n_frontends, **layer_kwargs)
    d = cfg.data
    spec_augment = None
    if d.augment and (d.time_masks or d.freq_masks):
        spec_augment = SpecAugment(freq_mask_param=d.freq_mask_bins, time_mask_param=d.time_mask_frames,
                                   n_freq_masks=d.freq_masks, n_time_masks=d.time_masks)
    return AdaSTFTClassifier(
        frontend, num_classes, backbone=cfg.model.backbone, activation=cfg.model.activation,
        norm=cfg.model.norm, dropout=cfg.model.dropout, pretrained_path=cfg.model.pretrained_path,
        spec_augment=spec_augment,
    )


def build_optimizer(cfg: Config, model: AdaSTFTClassifier) -> torch.optim.Optimizer:
    groups = model.parameter_groups(cfg.optim.lr, cfg.optim.weight_decay, cfg.stft.lr)
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.optim.lr)
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum)


def build_augment(cfg: Config) -> nn.Module | None:
    d = cfg.data
    if not d.augment:
        return None
    return Augment(
        noise_snr_db=tuple(d.noise_snr_db) if d.noise_snr_db else None,
        gain_db=tuple(d.gain_db) if d.gain_db else None,
        max_delay_s=d.max_delay_s,
        sample_rate=d.sample_rate,
    )
