"""Save and restore the train/eval flags of every submodule."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["evaluating", "preserved_modes"]


@contextmanager
def preserved_modes(module: nn.Module) -> Iterator[nn.Module]:
    """Restore each submodule's ``training`` flag exactly on exit (also on exceptions).

    ``module.train(flag)`` sets one flag for the whole tree; a model whose submodules had a mixed
    pattern (say a frozen BatchNorm in eval inside a training model) would lose it. This does not.
    """
    flags = [(m, m.training) for m in module.modules()]
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Put the whole tree in eval mode for the block, then restore every flag exactly."""
    with preserved_modes(module):
        module.eval()
        yield module
