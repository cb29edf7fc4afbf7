"""Equinox modules over jaxdrop: ``eqx.nn.Dropout`` and the family, with ``inference`` switches.

Swap ``eqx.nn.Dropout`` for ``jaxdrop.equinox.Dropout``: the same fields (``p``, the DROP
probability, and ``inference``), the same call (``key`` and ``inference`` keyword arguments),
``eqx.nn.inference_mode`` switches it off and on, and it works under ``eqx.filter_jit`` and
``eqx.filter_vmap``. It subclasses ``eqx.nn.Dropout``. Only the mask changes: jaxdrop's, with
its key-only backward pass; a ``p`` held as an array is traced by ``filter_jit``, so changing it
does not retrace.

The layout fields (axes, block size) are static, as `eqx.nn.Conv`'s are, so plain
``jax.jit`` and ``jax.tree.map`` leave them alone. Equinox layers see one example at a time
(``vmap`` over the batch), so the family's defaults here are unbatched and channels-first:
``ChannelDropout`` and ``FeatureAlphaDropout`` drop whole channels of a ``(C, ...)`` example,
``DropPath`` drops the whole example's branch, and ``DropBlock`` drops blocks of a
``(C, H, W)`` example.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
from jax.typing import ArrayLike

try:
  import equinox as eqx
except ImportError as err:  # the core needs jax alone; the adapter needs its framework
  raise ImportError('jaxdrop.equinox needs Equinox: pip install "jaxdrop[equinox]"') from err

from . import _validate as check
from ._alpha import alpha_dropout, feature_alpha_dropout
from ._block import drop_block
from ._concrete import concrete_dropout, initial_logit, module_regularizer
from ._dropout import dropout
from ._noise import gaussian_dropout
from ._structured import channel_dropout, drop_path

__all__ = [
  "Dropout",
  "ChannelDropout",
  "AlphaDropout",
  "FeatureAlphaDropout",
  "GaussianDropout",
  "DropPath",
  "DropBlock",
  "ConcreteDropout",
]


def _run(
  module: eqx.nn.Dropout | _Member,
  x: jax.Array,
  key: jax.Array | None,
  inference: bool | jax.Array | None,
  function: Callable[..., jax.Array],
  **options: Any,
) -> jax.Array:
  """Equinox's order of decisions, then the functional member `function`.

  The mode first (the call's, else the field), then the rate; a key is required only when
  units are dropped. A traced `inference` goes on to jaxdrop, which takes it.
  """
  inference = check.flag(module.inference if inference is None else inference, "inference")
  rate_value = check.probability(module.p, "p")
  if inference is True or rate_value == 0.0:
    return x
  if key is None:
    raise RuntimeError(
      f"{type(module).__name__} requires a key when running in "
      "non-deterministic mode: pass key=..., or inference=True (or switch the "
      "model with eqx.nn.inference_mode)"
    )
  return function(key, x, module.p, deterministic=inference, **options)


class Dropout(eqx.nn.Dropout):
  """``eqx.nn.Dropout`` with jaxdrop's mask: same fields, same call, same ``inference_mode``.

  ``Dropout(p=0.5, inference=False)``: `p` is the probability of DROPPING each unit (an
  array `p` may be traced; a traced value outside [0, 1] makes the output NaN:
  `jaxdrop.dropout` says how to find it). Calling it with
  ``(x, *, key=None, inference=None)`` returns ``jaxdrop.dropout(key, x, p)`` unless
  `inference` (the call's, else the field's) is True.

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.Dropout(0.5)
    >>> y = layer(jnp.ones(8), key=jax.random.key(0))
    >>> bool(jnp.all((y == 0) | (y == 2)))
    True
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(jnp.ones(8)) == 1))
    True
  """

  def __call__(
    self,
    x: jax.Array,
    *,
    key: jax.Array | None = None,
    inference: bool | None = None,
    deterministic: bool | None = None,
  ) -> jax.Array:
    if deterministic is not None:
      inference = deterministic
      warnings.warn(
        "Dropout()(deterministic=...) is deprecated in favour of "
        "Dropout()(inference=...), as in eqx.nn.Dropout",
        stacklevel=2,
      )
    return _run(self, x, key, inference, dropout)


class _Member(eqx.Module):
  """What every family module shares with ``eqx.nn.Dropout``: ``p``, ``inference``, the call.

  A member names its functional (`_function`) and the fields passed to it as keywords
  (`_options`).
  """

  p: float = 0.5
  inference: bool = False

  # Class variables, not fields: the jaxdrop function a subclass wraps and its field options.
  _function: ClassVar[Callable[..., jax.Array]]
  _options: ClassVar[tuple[str, ...]] = ()

  def __call__(
    self, x: jax.Array, *, key: jax.Array | None = None, inference: bool | None = None
  ) -> jax.Array:
    options = {name: getattr(self, name) for name in self._options}
    return _run(self, x, key, inference, self._function, **options)


class _PerChannel(_Member):
  """A member with one decision per channel of an unbatched ``(C, ...)`` example by default."""

  channel_axis: int = eqx.field(static=True, default=0)
  batch_axis: int | None = eqx.field(static=True, default=None)
  _options = ("channel_axis", "batch_axis")


class ChannelDropout(_PerChannel):
  """`jaxdrop.channel_dropout` as an Equinox module: drops whole channels of a ``(C, ...)``
  example (``channel_axis=0``, ``batch_axis=None``).

  Args:
    p: the probability of DROPPING each channel (default 0.5); `inference` and the call as for
      `Dropout`. A traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to
      find it).
    channel_axis, batch_axis: as for `jaxdrop.channel_dropout`; here by default an unbatched
      ``(C, ...)`` example (channel axis 0, no batch axis).

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.ChannelDropout(0.5)
    >>> y = layer(jnp.ones((4, 3)), key=jax.random.key(0))   # (channel, position)
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(jnp.ones((4, 3))) == 1))
    True
  """

  _function = staticmethod(channel_dropout)


class FeatureAlphaDropout(_PerChannel):
  """`jaxdrop.feature_alpha_dropout` as an Equinox module: alpha dropout of whole channels.

  Args:
    p: the probability of DROPPING each channel (default 0.5); `inference` and the call as for
      `Dropout`. A traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to
      find it).
    channel_axis, batch_axis: as for `jaxdrop.feature_alpha_dropout`; here by default an
      unbatched ``(C, ...)`` example (channel axis 0, no batch axis).

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.FeatureAlphaDropout(0.5)
    >>> y = layer(jnp.zeros((4, 3)), key=jax.random.key(0))  # (channel, position)
    >>> bool(jnp.all(y.min(1) == y.max(1)))     # one value per channel
    True
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(jnp.ones((4, 3))) == 1))
    True
  """

  _function = staticmethod(feature_alpha_dropout)


class AlphaDropout(_Member):
  """`jaxdrop.alpha_dropout` as an Equinox module: dropout for SELU networks.

  Args:
    p: the probability of DROPPING each unit (default 0.5), as for `jaxdrop.alpha_dropout`;
      `inference` and the call as for `Dropout`. A traced value outside [0, 1] makes the output NaN
      (`jaxdrop.dropout` says how to find it).

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.AlphaDropout(0.5)
    >>> y = layer(jnp.zeros((2, 8)), key=jax.random.key(0))
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(jnp.ones((2, 8))) == 1))
    True
  """

  _function = staticmethod(alpha_dropout)


class GaussianDropout(_Member):
  """`jaxdrop.gaussian_dropout` as an Equinox module: multiplicative Gaussian noise.

  Args:
    p: in [0, 1] (default 0.5), the `rate` of `jaxdrop.gaussian_dropout` (the noise variance is p /
      (1 - p)); `inference` and the call as for `Dropout`. A traced value outside [0, 1] makes the
      output NaN (`jaxdrop.dropout` says how to find it).

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.GaussianDropout(0.5)
    >>> x, key = jnp.arange(1.0, 9.0), jax.random.key(0)
    >>> bool(jnp.all(layer(2 * x, key=key) == 2 * layer(x, key=key)))  # the noise times 2x
    True
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(x) == x))
    True
  """

  _function = staticmethod(gaussian_dropout)


class DropPath(_Member):
  """`jaxdrop.drop_path` as an Equinox module: stochastic depth on a residual branch.

  With ``batch_axis=None`` (the default) one draw keeps or drops the whole example, the
  per-example decision once ``vmap`` gives each example its key; an integer axis draws one
  decision per entry of that axis instead.

  Args:
    p: the probability of DROPPING the branch (default 0.5); `inference` and the call as for
      `Dropout`. A traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to
      find it).
    batch_axis: None (the default), or an axis as for `jaxdrop.drop_path`.

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.DropPath(0.5)
    >>> keys = jax.random.split(jax.random.key(0), 4)           # one key per example
    >>> y = jax.vmap(lambda x, k: layer(x, key=k))(jnp.ones((4, 3)), keys)
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(jnp.ones(3)) == 1))
    True
  """

  batch_axis: int | None = eqx.field(static=True, default=None)

  def __call__(
    self, x: jax.Array, *, key: jax.Array | None = None, inference: bool | None = None
  ) -> jax.Array:
    if self.batch_axis is None:
      return _run(self, x, key, inference, drop_path, mode="batch")
    return _run(self, x, key, inference, drop_path, batch_axis=self.batch_axis, mode="row")


class DropBlock(_Member):
  """`jaxdrop.drop_block` as an Equinox module: drops square blocks of a ``(C, H, W)`` example.

  ``DropBlock(p, inference=False, block_size=7, spatial_axes=(1, 2))``.

  Args:
    p: the expected fraction of units to drop (default 0.5); `inference` and the call as for
      `Dropout`. A traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to
      find it).
    block_size, spatial_axes: as for `jaxdrop.drop_block`, by keyword (the second positional
      field is `inference`).

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.DropBlock(0.25, block_size=3)
    >>> y = layer(jnp.ones((1, 6, 6)), key=jax.random.key(2))
    >>> print((y[0] == 0).astype(int))          # dropped units: a 3 x 3 block
    [[0 0 0 0 0 0]
     [1 1 1 0 0 0]
     [1 1 1 0 0 0]
     [1 1 1 0 0 0]
     [0 0 0 0 0 0]
     [0 0 0 0 0 0]]
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(jnp.ones((1, 6, 6))) == 1))
    True
  """

  block_size: int = eqx.field(static=True, default=7)
  spatial_axes: Sequence[int] = eqx.field(static=True, default=(1, 2), converter=tuple)
  _function = staticmethod(drop_block)
  _options = ("block_size", "spatial_axes")


class ConcreteDropout(eqx.Module):
  """`jaxdrop.concrete_dropout` as an Equinox module whose rate is a trainable array field.

  The rate is ``sigmoid(rate_logit)``; ``rate_logit`` is an inexact array field, so
  ``eqx.filter_grad`` and an optax update train it with the other weights. Add `regularizer`
  of the layer the dropped units feed to the loss (Gal et al.'s objective): it is what keeps
  the rate from falling to 0. ``eqx.nn.inference_mode`` turns it off (the inputs pass
  unchanged); for MC-dropout predictions leave it on.

  Args:
    init_rate: the rate training starts from, in (0, 1) (0.1, as Gal et al.'s reference code).
    rate_shape: the shape of the learned rates, broadcast against an example: ``()`` (one rate
      for the layer, the reference code's) or one rate per unit, ``(features,)`` for a vector
      and ``(C, 1, 1)`` per channel of a ``(C, H, W)`` example.
    temperature: the relaxation's temperature (0.1; 2/3 for the spatial form).
    broadcast_dims: axes of an example that share one noise value (the spatial axes of a
      ``(C, H, W)`` example for the spatial form).
    weight_regularizer: the weight term's factor, ``l**2 / N`` for N training examples and a
      prior length scale l (the reference class's default 1e-6).
    dropout_regularizer: the entropy term's factor, ``2 / N`` (default 1e-5).
    inference: True to pass the inputs unchanged; the call as for `Dropout`.

  Examples:
    >>> import jax, jax.numpy as jnp, equinox as eqx, jaxdrop.equinox
    >>> layer = jaxdrop.equinox.ConcreteDropout(init_rate=0.2)
    >>> round(float(layer.rate), 6)
    0.2
    >>> loss = lambda m: jnp.var(m(jnp.ones((64, 64)), key=jax.random.key(0)))
    >>> bool(eqx.filter_grad(loss)(layer).rate_logit > 0)  # a higher rate, noisier output
    True
    >>> bool(jnp.all(eqx.nn.inference_mode(layer)(jnp.ones(8)) == 1))
    True
  """

  rate_logit: jax.Array
  temperature: float = eqx.field(static=True)
  broadcast_dims: tuple[int, ...] = eqx.field(static=True)
  weight_regularizer: float = eqx.field(static=True)
  dropout_regularizer: float = eqx.field(static=True)
  inference: bool = False

  def __init__(
    self,
    init_rate: float = 0.1,
    *,
    rate_shape: Sequence[int] = (),
    temperature: float = 0.1,
    broadcast_dims: Sequence[int] = (),
    weight_regularizer: float = 1e-6,
    dropout_regularizer: float = 1e-5,
    inference: bool = False,
  ) -> None:
    self.rate_logit = initial_logit(init_rate, rate_shape)
    self.temperature, self.broadcast_dims = temperature, tuple(broadcast_dims)
    self.weight_regularizer, self.dropout_regularizer = weight_regularizer, dropout_regularizer
    self.inference = inference

  @property
  def rate(self) -> jax.Array:
    """The current drop rates, ``sigmoid(rate_logit)``."""
    return jax.nn.sigmoid(self.rate_logit)

  def __call__(
    self, x: jax.Array, *, key: jax.Array | None = None, inference: bool | None = None
  ) -> jax.Array:
    flag = check.flag(self.inference if inference is None else inference, "inference")
    if flag is True:
      return x
    if key is None:
      raise RuntimeError(
        "ConcreteDropout requires a key when running in non-deterministic mode: pass "
        "key=..., or inference=True (or switch the model with eqx.nn.inference_mode)"
      )
    return concrete_dropout(
      key,
      x,
      self.rate,
      temperature=self.temperature,
      broadcast_dims=self.broadcast_dims,
      deterministic=flag,
    )

  def regularizer(self, weight: ArrayLike, *, input_dim: int | None = None) -> jax.Array:
    """`jaxdrop.concrete_dropout_regularizer` at this layer's rates, for the `weight` of the
    layer its output feeds; `input_dim` defaults to ``weight.shape[1]``, the input features of
    an ``eqx.nn.Linear`` weight ``(out, in)`` and the input channels of an ``eqx.nn.Conv``
    weight ``(out, in, ...)``, the axis along which per-unit rates are laid."""
    return module_regularizer(
      self.rate, weight, 1, input_dim, self.weight_regularizer, self.dropout_regularizer, "weight"
    )
