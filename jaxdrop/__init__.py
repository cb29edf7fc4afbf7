"""jaxdrop: dropout for JAX as pure functions of an explicit key, with a hand-derived backward pass."""

from ._dropout import dropout as dropout

__version__ = "0.1.0"

__all__ = ["dropout", "__version__"]
