"""``evaluate``: a split's loss, segment accuracy and clip accuracy by voting over each clip's
parts, exact under DDP; and the mixed-precision context training and evaluation share.

Example::

    result = evaluate(model, store, "val", parts=4, batch_clips=16, device=device, ctx=ctx)
    result.metrics("val")  # {"val_loss": ..., "val_clip_accuracy": ..., "val_segment_accuracy": ...}
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from adastft import distributed
from adastft.data import ClipStore, EvalParts, vote


@dataclass
class EvalResult:
    loss: float
    clip_accuracy: float
    segment_accuracy: float
    confusion: np.ndarray  # (classes, classes), rows = true class

    def metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}_loss": self.loss,
            f"{prefix}_clip_accuracy": self.clip_accuracy,
            f"{prefix}_segment_accuracy": self.segment_accuracy,
        }


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on a GPU that has it, float16 on one that does not; nothing on a CPU."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    store: ClipStore,
    split: str,
    parts: int,
    batch_clips: int,
    device: torch.device,
    ctx: distributed.DistContext,
    vote_method: str = "majority",
    amp: bool = False,
    eval_parts: int | None = None,
) -> EvalResult:
    """Clip accuracy by voting over ``parts`` segments (``eval_parts`` of them, evenly spaced),
    segment accuracy and loss; exact under DDP.

    Each rank takes every ``world_size``-th clip; counts are summed over ranks.
    """
    model.eval()
    n_classes = len(store.classes)
    dataset = EvalParts(store, split=split, parts=parts, eval_parts=eval_parts)
    parts = dataset.segments  # per clip, from here on
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    loader = DataLoader(shard, batch_size=batch_clips, shuffle=False)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, segments, correct segs, correct clips
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=device)
    for segments, labels in loader:
        b = segments.shape[0]
        segments, labels = segments.to(device), labels.to(device)
        with autocast(device, amp):
            logits = model(segments.reshape(b * parts, -1)).float().reshape(b, parts, n_classes)
        seg_labels = labels.repeat_interleave(parts)
        loss = nn.functional.cross_entropy(logits.reshape(b * parts, -1), seg_labels, reduction="sum")
        predictions = vote(logits, method=vote_method)
        totals += torch.stack(
            [
                loss.double(),
                torch.tensor(float(b * parts), device=device, dtype=torch.float64),
                (logits.argmax(-1).reshape(-1) == seg_labels).sum().double(),
                (predictions == labels).sum().double(),
            ]
        )
        confusion.index_put_((labels, predictions), torch.ones(b, dtype=torch.float64, device=device), accumulate=True)
    ctx.all_reduce_sum(totals)
    ctx.all_reduce_sum(confusion)
    n_clips = float(confusion.sum())
    return EvalResult(
        loss=float(totals[0] / max(totals[1], 1)),
        clip_accuracy=float(totals[3] / max(n_clips, 1)),
        segment_accuracy=float(totals[2] / max(totals[1], 1)),
        confusion=confusion.cpu().numpy().astype(np.int64),
    )
