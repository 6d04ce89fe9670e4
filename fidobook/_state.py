"""Temporarily changing a model's train/eval modes, with every module's flag restored on exit."""
from __future__ import annotations

import contextlib

from torch import nn

__all__: list[str] = []  # private module


@contextlib.contextmanager
def restored_modes(model: nn.Module):
    """Yields ``model``; on exit, also on error, every module's ``training`` flag is as before.

    A mixed state (one submodule in eval inside a model in train mode) comes back mixed, which
    ``model.train(previous)`` would not do.
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training
