"""Registry of backbone networks.

A backbone is a functional ``keras.Model`` mapping normalised images ``[B, H, W, C]`` to a dict
``{"logits": [B, K], "features": [F^1, ..., F^M]}``: the M stage outputs FFSD uses, shallow to
deep (``F^M = F^L`` is the last-layer map of the paper's Section III). No hooks: the features are
outputs of the graph. Adding a network is one file that decorates its builder with
``@register("name")`` and is imported in ``networks/__init__.py``.
"""

from __future__ import annotations

from typing import Callable

import keras

Builder = Callable[..., keras.Model]
_REGISTRY: dict[str, Builder] = {}


class UnknownNetworkError(ValueError):
    pass


def register(name: str) -> Callable[[Builder], Builder]:
    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"network {name!r} registered twice")
        _REGISTRY[name] = builder
        return builder

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def build_network(name: str, *, num_classes: int, input_shape=(32, 32, 3), model_name: str | None = None) -> keras.Model:
    """Builds a fresh backbone ``name`` (see module docstring for its outputs)."""
    if name not in _REGISTRY:
        raise UnknownNetworkError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](num_classes=num_classes, input_shape=tuple(input_shape), name=model_name or name)
