"""Clip-level decisions from segment logits: majority vote or mean probability."""

from __future__ import annotations

import torch

from adastft.checks import one_of

METHODS = ("majority", "mean")


def check_method(method: str) -> None:
    """``method`` must be one of :data:`METHODS` (what :func:`vote` checks first; a config checks it early)."""
    one_of("method", method, METHODS)


def vote(logits: torch.Tensor, method: str = "majority") -> torch.Tensor:
    """``(clips, parts, classes)`` logits -> ``(clips,)`` int64 predicted classes.

    ``"majority"``: the class most segments predict; among tied classes, the one with the
    highest mean softmax probability over the segments. ``"mean"``: the class with the highest
    mean softmax probability.

    Example: ``vote(model(x.flatten(0, 1)).view(clips, parts, -1))``.
    """
    check_method(method)
    if not torch.is_tensor(logits) or logits.dim() != 3 or not torch.is_floating_point(logits):
        shape = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(f"logits must be a float tensor (clips, parts, classes), got {shape}")
    mean_prob = logits.softmax(dim=-1).mean(dim=1)  # (C, K)
    if method == "mean":
        return mean_prob.argmax(dim=-1)
    votes = torch.nn.functional.one_hot(logits.argmax(dim=-1), logits.shape[-1]).sum(dim=1)  # (C, K)
    tied = votes == votes.max(dim=-1, keepdim=True).values
    return mean_prob.masked_fill(~tied, -1.0).argmax(dim=-1)


def vote_accuracy(logits: torch.Tensor, labels: torch.Tensor, method: str = "majority") -> dict[str, float]:
    """``{"clip_accuracy", "segment_accuracy"}`` for ``(clips, parts, classes)`` logits, ``(clips,)`` labels."""
    if not torch.is_tensor(labels) or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must be a tensor of shape ({logits.shape[0]},), got {getattr(labels, 'shape', labels)}"
        )
    labels = labels.to(logits.device)
    clip = (vote(logits, method) == labels).float().mean()
    segment = (logits.argmax(dim=-1) == labels[:, None]).float().mean()
    return {"clip_accuracy": float(clip), "segment_accuracy": float(segment)}
