"""Input that is valid but almost certainly a mistake: one warning line each, before any work.

Errors (``adastft.config``) refuse what cannot run; these only warn, because each case can be
meant (a learning rate of 0.5 for SGD on a toy problem), and a run that does what it was told is
better than a refusal the user has to argue with. The train and search commands print them as
``<program>: warning: ...`` before training (the search: before Ray starts).
"""

from __future__ import annotations

from adastft.config import Config

# Learning rates above these are far outside what the optimisers are used with for a ResNet:
# AdamW is tuned in 1e-5 .. 1e-2, SGD with momentum in 1e-4 .. 0.5.
LR_CEILING = {"adamw": 0.1, "sgd": 1.0}


def advice(cfg: Config) -> list[str]:
    """One line per suspicious value, naming the key and what it probably should be."""
    out: list[str] = []
    ceiling = LR_CEILING.get(cfg.optim.name)
    for key, lr in (("optim.lr", cfg.optim.lr), ("stft.lr", cfg.stft.lr)):
        if ceiling is not None and lr is not None and lr > ceiling:
            out.append(
                f"{key}={lr:g} is far above {cfg.optim.name}'s usual range (at most {ceiling:g}): "
                "training will most likely diverge"
            )
    stft = cfg.stft
    window = stft.win_length or stft.n_fft
    if stft.hop_length is not None and stft.hop_length > window:
        out.append(
            f"stft.hop_length={stft.hop_length} is longer than the window ({window} samples): "
            f"{stft.hop_length - window} samples between frames are never seen"
        )
    if stft.learn_compression and stft.compression != "pcen":
        out.append(
            f"stft.learn_compression=true does nothing with stft.compression={stft.compression}: "
            "only pcen has parameters to learn"
        )
    learns = stft.learn_window or stft.learn_kernel or stft.learn_compression or stft.learn_win_length
    if learns and stft.learn_after_epoch >= cfg.train.epochs:
        out.append(
            f"stft.learn_after_epoch={stft.learn_after_epoch} is not before the last epoch "
            f"(train.epochs={cfg.train.epochs}): the front end never learns"
        )
    optim = cfg.optim
    # The default's own cut (1 epoch of a 1-epoch smoke run) is documented; a value someone chose is told.
    chosen = optim.warmup_epochs != type(optim)().warmup_epochs
    if optim.schedule == "cosine" and chosen and optim.warmup_epochs > cfg.train.epochs / 2:
        out.append(
            f"optim.warmup_epochs={optim.warmup_epochs:g} is more than half of train.epochs="
            f"{cfg.train.epochs}: the warm-up is cut to {cfg.train.epochs / 2:g} epochs so that the "
            "learning rate still decays; lower optim.warmup_epochs or raise train.epochs"
        )
    if not cfg.data.augment and cfg.data.mixup_alpha is not None:
        out.append(
            f"data.augment=false switches every training augmentation off, data.mixup_alpha="
            f"{cfg.data.mixup_alpha:g} too: set data.augment=true to mix"
        )
    return out
