"""jaxdrop: dropout and its family for JAX.

Pure functions of an explicit key with a hand-derived backward pass.
"""

from types import ModuleType as _ModuleType

from ._alpha import alpha_dropout as alpha_dropout
from ._alpha import feature_alpha_dropout as feature_alpha_dropout
from ._attention import dot_product_attention as dot_product_attention
from ._block import drop_block as drop_block
from ._concrete import concrete_dropout as concrete_dropout
from ._concrete import concrete_dropout_regularizer as concrete_dropout_regularizer
from ._depth import stochastic_depth as stochastic_depth
from ._dropout import dropout as dropout
from ._locked import DropoutMask as DropoutMask
from ._locked import apply_mask as apply_mask
from ._locked import make_mask as make_mask
from ._mask import random_bits as random_bits
from ._mc import MCResult as MCResult
from ._mc import mc_dropout as mc_dropout
from ._noise import gaussian_dropout as gaussian_dropout
from ._noise import gaussian_noise as gaussian_noise
from ._recurrent import zoneout as zoneout
from ._structured import channel_dropout as channel_dropout
from ._structured import drop_path as drop_path
from ._variational import variational_dense as variational_dense
from ._variational import variational_dropout as variational_dropout
from ._variational import variational_dropout_kl as variational_dropout_kl
from ._weights import drop_connect as drop_connect

__version__ = "0.1.0"

# Framework adapters, imported (with their framework) on first use: `jaxdrop.nnx.Dropout`;
# and the mask for kernels, `jaxdrop.pallas`.
_ADAPTERS = ("nnx", "linen", "equinox", "haiku", "pallas")


def __getattr__(name: str) -> _ModuleType:
  if name in _ADAPTERS:
    import importlib

    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
  "dropout",
  "channel_dropout",
  "alpha_dropout",
  "feature_alpha_dropout",
  "gaussian_dropout",
  "gaussian_noise",
  "drop_path",
  "stochastic_depth",
  "drop_block",
  "drop_connect",
  "zoneout",
  "concrete_dropout",
  "concrete_dropout_regularizer",
  "variational_dropout",
  "variational_dropout_kl",
  "variational_dense",
  "dot_product_attention",
  "make_mask",
  "apply_mask",
  "DropoutMask",
  "mc_dropout",
  "MCResult",
  "random_bits",
  "__version__",
]
