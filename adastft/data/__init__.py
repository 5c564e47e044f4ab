"""Data: GTZAN, any class-per-folder set, or a built-in synthetic set, decoded once into Arrow.

    from adastft.data import DataSpec, prepare, TrainCrops, EvalParts, vote

    store = prepare(DataSpec(source="synthetic", cache_dir="/tmp/adastft"))  # builds once, mmaps
    train = TrainCrops(store, split="train", parts=12, seed=0)  # (crop_samples,), label
    val = EvalParts(store, split="val", parts=12)                # (12, crop_samples), label
    pred = vote(logits)                                          # (clips, parts, classes) -> (clips,)

Imports torch, torchaudio, numpy, pyarrow and soundfile only.
"""

from adastft.data.augment import Augment, Mixup, SpecAugment, spec_augment
from adastft.data.cache import CacheError
from adastft.data.decode import BadAudioWarning
from adastft.data.loader import (
    EvalParts,
    TrainCrops,
    check_batching,
    check_parts,
    eval_loader,
    spaced_parts,
    train_loader,
)
from adastft.data.sources import DataError
from adastft.data.spec import DataSpec, prepare
from adastft.data.store import ClipStore
from adastft.data.synthetic import CLASSES as SYNTHETIC_CLASSES
from adastft.data.vote import vote, vote_accuracy

__all__ = [
    "Augment",
    "BadAudioWarning",
    "CacheError",
    "ClipStore",
    "DataError",
    "DataSpec",
    "EvalParts",
    "Mixup",
    "SYNTHETIC_CLASSES",
    "SpecAugment",
    "TrainCrops",
    "check_batching",
    "check_parts",
    "eval_loader",
    "prepare",
    "spaced_parts",
    "spec_augment",
    "train_loader",
    "vote",
    "vote_accuracy",
]
