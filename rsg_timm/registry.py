"""The one name registry behind ``--loss``, ``--reweight``, ``--sampler`` and ``--dataset``.

A duplicate name is an error (as in torchvision, unlike timm's overwrite warning) and an unknown name is a
``ValueError`` that lists the valid ones.
"""
from typing import Any, Callable, Dict, Iterator, List

__all__ = ['Registry']


class Registry:
    """Names mapped to builders (or any values) of one ``kind`` of plugin.

    Args:
        kind: what the names are, as users read it in messages (e.g. ``'loss'``).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Any] = {}

    def add(self, name: str, value: Any) -> None:
        """Register ``value`` under ``name``."""
        if name in self._entries:
            raise ValueError(f'{self.kind.capitalize()} {name!r} is already registered.')
        self._entries[name] = value

    def decorator(self, name: str) -> Callable[[Any], Any]:
        """A decorator registering the decorated class or function under ``name``."""
        def _register(value: Any) -> Any:
            self.add(name, value)
            return value
        return _register

    def get(self, name: str) -> Any:
        """The value registered as ``name``."""
        if name not in self._entries:
            raise ValueError(f'Unknown {self.kind} {name!r}; choose one of: {", ".join(self.names())}.')
        return self._entries[name]

    def names(self) -> List[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
