"""icefall: speech recognition recipes in pure PyTorch.

This file deliberately imports nothing: each submodule imports only what it
needs, so ``import icefall.checkpoint`` does not pull in lhotse, sentencepiece
or tensorboard. Import what you use, e.g.::

    from icefall.checkpoint import save_checkpoint
    from icefall.rnnt_loss import rnnt_loss_pruned
"""

__version__ = "0.1.0"
