"""hpsearch: hyperparameter search for PyTorch MLPs that explains its result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpsearch.api import SearchResult

__all__ = ["SearchResult", "minimize"]


def minimize(*args: Any, **kwargs: Any) -> SearchResult:
    """Run hpsearch's strategies on any Python objective; see `hpsearch.api.minimize`."""
    from hpsearch.api import minimize as run

    return run(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "SearchResult":
        from hpsearch.api import SearchResult

        return SearchResult
    raise AttributeError(name)
