"""negalign's exceptions, in one module that imports nothing of negalign: any layer (config, data, generation,
trainers, offline models) can raise or catch them without importing the layer that raises them. Each message says
what to change. The old homes re-export them (``negalign.config.RecipeError`` and so on)."""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe that cannot be run: unknown key, missing file, bad value. The message says what to change."""


class DataError(ValueError):
    """Data that cannot be used: missing file or column, empty split. The message says what is wrong and where."""


class GenerationError(RuntimeError):
    """Generation cannot proceed: an output file from different arguments, an unavailable backend."""


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient norm: the run stopped before the update; the message names the last checkpoint."""


class OfflineModelError(RecipeError):
    """An ``offline:`` model that cannot be provided; the message says how to provide it by hand."""


__all__ = ["DataError", "GenerationError", "NonFiniteError", "OfflineModelError", "RecipeError"]
