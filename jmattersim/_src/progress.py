"""The progress bar of every long job (tqdm), or one that shows nothing."""

from __future__ import annotations

from typing import Any


class _NoBar:
    """tqdm's interface where no bar is asked for."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, **tqdm_options: Any):
    """A tqdm bar with ``tqdm_options`` (total, initial, unit, desc) when
    ``enabled``, else one with the same methods that shows nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(**tqdm_options)
