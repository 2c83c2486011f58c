"""Exceptions raised by squish-plugin. Each message is one sentence naming the culprit."""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "InvalidArgumentError",
    "MissingExtraError",
    "SquishError",
    "UntraceableModelError",
]


class SquishError(Exception):
    """Base class of every error squish-plugin raises on purpose."""


class InvalidArgumentError(SquishError, ValueError):
    """An argument is outside what is allowed (the message says what is)."""


class UntraceableModelError(SquishError):
    """torch-pruning could not trace the model with the given example inputs."""


class MissingExtraError(SquishError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class CheckpointError(SquishError):
    """A file is not a squish-plugin checkpoint, is corrupt, or does not fit the model."""
