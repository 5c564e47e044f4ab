"""Classify audio files with a trained model, voting over each file's parts.

Run: ``python -m adastft.predict song.wav other.flac --model runs/default/best_model.pt``
(``--model`` also takes a run folder, ``best.pt``/``last.pt``, or an MLflow URI such as
``runs:/<run_id>``, with ``--tracking-uri`` when the store is not ``./mlflow.db``).

Each file is decoded like the training data (mono, resampled, padded or trimmed to the clip
length), split into the configured number of parts, classified in one batch, and reported as the
voted class plus the top genres by mean probability over the parts. Only the parts that hold some of
the file vote; a tie is printed as one (``tie jazz | blues``), and a file shorter than one part
gets a note.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adastft.checkpoint import CheckpointError, load_checkpoint
from adastft.config import Config
from adastft.data import vote
from adastft.data.decode import BadAudio, decode_file


# Mean probabilities closer than this to the voted class's are a tie: the report prints two decimals.
TIE = 0.005


@dataclass
class Prediction:
    path: str
    voted: str
    top: list[tuple[str, float]]  # (class, mean probability over parts), best first
    tied: list[str] = field(default_factory=list)  # the classes tied with the voted one (none: no tie)
    note: str = ""  # what makes this prediction weak (a file shorter than the model's segments)

    def line(self) -> str:
        """``path: label    (a 0.61  b 0.22 ...)``, a tie as ``tie a | b``, and the note after."""
        shown = "  ".join(f"{c} {prob:.2f}" for c, prob in self.top)
        label = f"tie {' | '.join([self.voted, *self.tied])}" if self.tied else self.voted
        return f"{self.path}: {label}    ({shown})" + (f"    note: {self.note}" if self.note else "")


class Predictor:
    """A trained classifier ready to label files. ``Predictor.load(path_or_uri)``."""

    def __init__(self, state: dict, device: str = "cpu") -> None:
        from adastft.training import build_model

        self.cfg = Config.from_dict(state["config"])
        self.classes = list(state["classes"])
        self.device = torch.device(device)
        self.model = build_model(self.cfg, len(self.classes))
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()

    @classmethod
    def load(cls, model: str, tracking_uri: str | None = None, device: str = "cpu") -> "Predictor":
        path = _locate(model, tracking_uri)
        state = load_checkpoint(path, map_location="cpu")
        missing = [k for k in ("model", "config", "classes") if not isinstance(state, dict) or k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {str(path)!r} is not an adastft model: it has no {', '.join(missing)}")
        return cls(state, device)

    @torch.no_grad()
    def predict(self, path: str | Path, top: int = 3) -> Prediction:
        d = self.cfg.data
        clip_samples = int(round(d.clip_seconds * d.sample_rate))
        decoded = decode_file(str(path), d.sample_rate, clip_samples)
        audio = torch.from_numpy(decoded.audio)
        crop = clip_samples // d.parts
        seconds = decoded.orig_samples / decoded.orig_sample_rate
        # Only the parts that hold some of the file vote: the rest is the padding's silence.
        used = min(d.parts, max(1, math.ceil(seconds * d.sample_rate / crop)))
        segments = audio[: crop * used].reshape(used, crop).to(self.device)  # (parts, crop)
        logits = self.model(segments).float().unsqueeze(0)  # (1, parts, classes)
        voted = int(vote(logits, method=d.vote)[0])
        probs = logits.softmax(-1).mean(1)[0]
        ranked = probs.argsort(descending=True).tolist()
        order = ranked[:top]
        # Within the shown precision of the voted class, a class is as likely: the label would be a coin flip.
        tied = [self.classes[i] for i in ranked if i != voted and abs(float(probs[voted] - probs[i])) < TIE]
        note = ""
        if used == 1 and seconds * d.sample_rate < crop:
            note = (
                f"{seconds:.2f} s is shorter than one segment ({crop / d.sample_rate:.2f} s): "
                "the rest of it is silence, a weak guess"
            )
        return Prediction(
            str(path), self.classes[voted], [(self.classes[i], float(probs[i])) for i in order], tied, note
        )


def _locate(model: str, tracking_uri: str | None) -> Path:
    """A local checkpoint path for ``model`` (a file, a run folder, or an MLflow URI)."""
    if "://" in model or model.startswith("runs:/") or model.startswith("models:/"):
        import mlflow.artifacts

        uri = model.rstrip("/")
        if uri.startswith("runs:/") and uri.count("/") == 1:
            uri += "/checkpoint/best_model.pt"
        store = tracking_uri or "sqlite:///mlflow.db"
        if store.startswith("sqlite:///") and not Path(store.removeprefix("sqlite:///")).is_file():
            # MLflow would create an empty store there and then not find the run
            raise CheckpointError(f"--model {model!r}: no MLflow store {store}; give --tracking-uri")
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=store))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"--model {model!r}: cannot fetch it from MLflow ({first})") from None
    path = Path(model)
    if path.is_dir():
        for name in ("best_model.pt", "best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"--model {model!r} is a folder without best_model.pt, best.pt or last.pt")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="adastft-predict" if Path(sys.argv[0]).name == "adastft-predict" else "python -m adastft.predict",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, au, ...)")
    parser.add_argument("--model", required=True, help="checkpoint file, run folder, or MLflow URI (runs:/<id>)")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow store for runs:/ URIs (default sqlite:///mlflow.db)"
    )
    parser.add_argument("--top", type=int, default=3, help="how many genres to show per file")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    if args.device != "cpu" and not args.device.startswith("cuda"):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is visible; use --device cpu")
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"adastft.predict: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor.load(args.model, args.tracking_uri, args.device)
    except (CheckpointError, KeyError, ValueError) as exc:
        print(f"adastft.predict: error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for f in args.files:
        try:
            p = predictor.predict(f, top=args.top)
        except BadAudio as exc:
            print(f"{f}: error: cannot decode ({exc})", file=sys.stderr)
            failed += 1
            continue
        print(p.line())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
