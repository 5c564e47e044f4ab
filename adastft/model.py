"""The classifier: AdaSTFT front end(s) -> activation -> normalisation -> torchvision ResNet."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from adastft.checks import need, one_of
from adastft.layer import AdaSTFT, AdaSTFTBank

log = logging.getLogger(__name__)

BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "cnn4",
)

ACTIVATIONS = (None, "leaky_relu")  # after the front end; the original's proposal is leaky_relu
NORMS = ("batch", "instance", "none")  # of the spectrogram channels


class AdaSTFTClassifier(nn.Module):
    """Waveform in, class logits out.

    ``(batch, time) -> (batch, num_classes)``. The front end is an :class:`AdaSTFT` (its
    spectrogram is copied to the ResNet's three input channels) or an :class:`AdaSTFTBank` of
    three (one spectrogram per channel). ``spec_augment`` (a module on ``(B, C, F, T)``) runs in
    training mode only.

    Example::

        model = AdaSTFTClassifier(AdaSTFT(22050, n_fft=1024, hop_length=512, compression="log1p"),
                                  num_classes=10)
        logits = model(torch.randn(16, 55125))  # (16, 10)
    """

    def __init__(
        self,
        frontend: AdaSTFT | AdaSTFTBank,
        num_classes: int,
        backbone: str = "resnet18",
        activation: str | None = None,
        norm: str = "batch",
        dropout: float = 0.2,
        pretrained_path: str | Path | None = None,
        spec_augment: nn.Module | None = None,
    ) -> None:
        super().__init__()
        channels = len(frontend) if isinstance(frontend, AdaSTFTBank) else 1
        self.check_arguments(
            num_classes=num_classes,
            n_frontends=channels,
            backbone=backbone,
            activation=activation,
            norm=norm,
            dropout=dropout,
        )
        self.frontend = frontend
        self.channels = channels
        self.activation = nn.LeakyReLU(0.01) if activation == "leaky_relu" else nn.Identity()
        norms = {
            "batch": lambda: nn.BatchNorm2d(channels),
            "instance": lambda: nn.InstanceNorm2d(channels, affine=True),
            "none": nn.Identity,
        }
        self.norm = norms[norm]()
        self.spec_augment = spec_augment if spec_augment is not None else nn.Identity()
        net = build_backbone(backbone)
        if pretrained_path is not None:
            _load_backbone(net, Path(pretrained_path))
        net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(net.fc.in_features, num_classes))
        self.backbone = net

    @staticmethod
    def check_arguments(
        *,
        n_frontends: int,
        backbone: str,
        activation: str | None,
        norm: str,
        dropout: float,
        num_classes: int | None = None,
    ) -> None:
        """Raise the ``ValueError`` the constructor would, without building the ResNet (a config
        check of resnet152 allocates nothing). ``n_frontends``: 1 for an :class:`AdaSTFT` front
        end, the bank's length for an :class:`AdaSTFTBank`; ``num_classes=None``: not known yet."""
        one_of("n_frontends", n_frontends, (1, 3))
        one_of("backbone", backbone, BACKBONES)
        one_of("activation", activation, ACTIVATIONS)
        one_of("norm", norm, NORMS)
        need(isinstance(dropout, (int, float)) and 0 <= dropout < 1, f"dropout must be in [0, 1), got {dropout!r}")
        need(num_classes is None or num_classes >= 2, f"num_classes must be >= 2, got {num_classes!r}")

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised front-end output fed to the ResNet, ``(B, time) -> (B, 3, F, T)``."""
        spec = self.frontend(x)
        if self.channels == 1:
            spec = spec.unsqueeze(1)  # (B, 1, F, T)
        spec = self.norm(self.activation(spec))
        if self.training:
            spec = self.spec_augment(spec)
        return spec.expand(-1, 3, -1, -1) if self.channels == 1 else spec  # (B, 3, F, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.spectrogram(x))

    def frontends(self) -> list[AdaSTFT]:
        return list(self.frontend.layers) if isinstance(self.frontend, AdaSTFTBank) else [self.frontend]

    def set_frontend_learning(
        self,
        window: bool | None = None,
        kernel: bool | None = None,
        compression: bool | None = None,
        win_length: bool | None = None,
    ) -> None:
        self.frontend.set_learning(window=window, kernel=kernel, compression=compression, win_length=win_length)

    def parameter_groups(self, lr: float, weight_decay: float, frontend_lr: float | None = None) -> list[dict]:
        """Back end with weight decay at ``lr``; the front end without decay, its window and kernel at
        ``frontend_lr`` (when given), its few per-band or scalar parameters (PCEN's, the window's
        length) at ``lr``, as normalisation parameters of the back end learn."""
        frontend = self.frontend.parameter_groups(lr=frontend_lr if frontend_lr is not None else lr, scalar_lr=lr)
        front_ids = {id(p) for g in frontend for p in g["params"]}
        rest = [p for p in self.parameters() if id(p) not in front_ids]
        return [{"params": rest, "lr": lr, "weight_decay": weight_decay}, *frontend]


class CNN4(nn.Module):
    """A small back end: four conv-BN-ReLU-pool blocks (32, 64, 128, 256 channels), global average
    pooling and ``fc``, about 0.4 M parameters to resnet18's 11 M; ``(B, 3, F, T) -> (B, 1000)``
    until the classifier replaces ``fc``. For measuring what a learned front end gives when the
    back end is small (a trainable STFT's gain shrinks as the back end grows: arXiv 2204.11437)."""

    def __init__(self, num_classes: int = 1000, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers, previous = [], 3
        for width in channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def build_backbone(name: str, num_classes: int = 1000) -> nn.Module:
    """The named back end, untrained: a torchvision ResNet or :class:`CNN4`; each has ``fc``."""
    if name == "cnn4":
        return CNN4(num_classes)
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def check_backbone_file(path: str | Path) -> None:
    """A backbone's state dict must be a local file (nothing is downloaded)."""
    need(
        Path(path).expanduser().is_file(),
        f"model.pretrained_path {str(path)!r} is not a file: give a local torchvision state dict",
    )


def _load_backbone(net: nn.Module, path: Path) -> None:
    check_backbone_file(path)
    path = path.expanduser()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle payload or a damaged file
        raise ValueError(f"model.pretrained_path {str(path)!r} is not a loadable state dict: {exc}") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # our head differs
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"model.pretrained_path {str(path)!r} does not fit the backbone: "
            f"{len(missing)} missing and {len(unexpected)} unexpected keys (e.g. {(missing + unexpected)[0]!r})"
        )
    log.info("loaded backbone weights from %s", path)
