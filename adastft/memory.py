"""The memory a configuration's model needs, known before any of it is allocated.

A learnable DFT kernel grows with ``n_fft ** 2``: ``stft.n_fft=32768`` is 2 x 16385 x 32768
float32 = 4 GiB per copy, and a front end holds the kernel, its initial value (for
``kernel_change``) and, when it learns, its gradient and the optimiser's state (AdamW: two
moments). Out of memory would come minutes later, after the data cache is built, as a crash deep
in torch; :func:`check_fits` says it in one line first. The estimate counts parameters, gradients,
optimiser state and the front end's fixed tensors, not activations, so it is a lower bound.
"""

from __future__ import annotations

import torch

from adastft.config import Config

FLOAT32 = 4
# The check runs before the data says how many classes there are; the head is 512 x classes
# floats, nothing next to the rest, so a nominal count does.
NOMINAL_CLASSES = 10


def model_bytes(cfg: Config, num_classes: int) -> int:
    """Bytes of the model's parameters, their gradients and the optimiser's state, and of each
    front end's fixed copies of its initial window and kernel."""
    from adastft.model import build_backbone

    stft = cfg.stft
    n_freq = stft.n_fft // 2 + 1
    window = stft.n_fft if stft.learn_win_length else stft.win_length or stft.n_fft
    kernel, win = 2 * n_freq * stft.n_fft, window
    states = 2 if cfg.optim.name == "adamw" else 1  # AdamW: two moments; SGD: momentum
    per_frontend = 2 * (kernel + win)  # the parameters and their initial copies
    per_frontend += (kernel if stft.learn_kernel else 0) * (1 + states) + (win if stft.learn_window else 0) * (
        1 + states
    )
    with torch.device("meta"):  # the backbone's size without allocating it
        backbone = build_backbone(cfg.model.backbone, num_classes=num_classes)
    backbone_params = sum(p.numel() for p in backbone.parameters())
    return FLOAT32 * (cfg.model.n_frontends * per_frontend + backbone_params * (2 + states))


def available_bytes(device: torch.device) -> int:
    """Free memory where the model will live: the GPU's, or the machine's."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(cfg: Config, device: torch.device, num_classes: int = NOMINAL_CLASSES) -> None:
    """Raise ``ValueError`` (one line naming the key) when the model cannot fit."""
    need, free = model_bytes(cfg, num_classes), available_bytes(device)
    if need <= free:
        return
    gib = 2**30
    where = "GPU" if device.type == "cuda" else "machine"
    raise ValueError(
        f"the model needs at least {need / gib:.1f} GiB (parameters, gradients, optimiser state) and the "
        f"{where} has {free / gib:.1f} GiB free: stft.n_fft={cfg.stft.n_fft} makes each front end's "
        f"kernel {2 * (cfg.stft.n_fft // 2 + 1) * cfg.stft.n_fft * FLOAT32 / gib:.2f} GiB; lower "
        "stft.n_fft, use fewer front ends or a smaller model.backbone"
    )
