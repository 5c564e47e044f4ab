"""adastft: a learnable-spectrogram audio classifier.

The library never imports Ray or Hydra; it is usable from a notebook with plain Python objects.
"""

from adastft.layer import AdaSTFT, AdaSTFTBank

__all__ = ["AdaSTFT", "AdaSTFTBank"]
__version__ = "0.1.0"
