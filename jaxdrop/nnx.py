"""Flax NNX modules over jaxdrop: ``nnx.Dropout`` and the family, with NNX's mode switches.

Swap ``nnx.Dropout`` for ``jaxdrop.nnx.Dropout`` and nothing else changes: the constructor and
the call take the same arguments, keys come from the same ``nnx.Rngs`` streams (forked at
construction, or given at call time), ``model.eval()`` / ``model.train()``,
``set_attributes`` and ``nnx.view(model, deterministic=...)`` switch it as they switch Flax's
(it is an ``nnx.Dropout`` subclass, so filters naming ``nnx.Dropout`` select it too), and it
works under ``nnx.jit``, ``nnx.vmap`` and ``nnx.scan`` with ``nnx.split_rngs``. Only the mask
changes: jaxdrop's, with its key-only backward pass. A ``rate`` held as an array or
``nnx.Variable`` is state, so changing it does not retrace a jitted step.

The family follows the same conventions (``ChannelDropout``, ``AlphaDropout``,
``FeatureAlphaDropout``, ``GaussianDropout``, ``DropPath``, ``DropBlock``, and
``ConcreteDropout``, whose rate is an ``nnx.Param``), and `attention_fn`
has the signature of ``nnx.dot_product_attention``, for
``nnx.MultiHeadAttention(..., attention_fn=jaxdrop.nnx.attention_fn)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

try:
  from flax import nnx
except ImportError as err:  # the core needs jax alone; the adapter needs its framework
  raise ImportError('jaxdrop.nnx needs Flax: pip install "jaxdrop[flax]"') from err
from flax.nnx.nn import dtypes as _flax_dtypes
from flax.nnx.nn.attention import dot_product_attention_weights as _flax_weights
from flax.typing import PrecisionLike, PromoteDtypeFn

from . import _validate as check
from ._alpha import alpha_dropout, feature_alpha_dropout
from ._block import drop_block
from ._concrete import concrete_dropout, initial_logit, module_regularizer
from ._dropout import dropout
from ._flax_attention import flax_attention
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
  "attention_fn",
]

Rngs = nnx.Rngs | nnx.RngStream | jax.Array | None


def _rate_value(
  rate: ArrayLike | nnx.Variable, per_unit: bool = False
) -> tuple[ArrayLike, float | None]:
  """The rate (the value of an ``nnx.Variable`` holding it), checked where it is concrete;
  returns ``(rate, its float or None when traced)``. With `per_unit` (`ConcreteDropout`'s
  learned rates) an array of rates is left to the function to check, and never skips the
  draw."""
  rate = rate[...] if isinstance(rate, nnx.Variable) else rate
  if per_unit and jnp.ndim(rate) != 0:
    return rate, None
  return rate, check.probability(rate, "rate")


def _stream(rngs: nnx.Rngs, collection: str, owner: str) -> nnx.RngStream:
  """The stream `collection` of `rngs` (its "default" stream if it has one), or an error
  naming the stream and how to add it (Flax raises a bare KeyError)."""
  try:
    return rngs[collection]
  except KeyError as err:
    streams = ", ".join(repr(name) for name, _ in rngs.items()) or "none"
    example = f"{collection}=0" if collection == "params" else f"params=0, {collection}=1"
    raise ValueError(
      f"{owner} draws its keys from the nnx.Rngs stream {collection!r}, which this nnx.Rngs "
      f"does not have (its streams: {streams}): add it, e.g. nnx.Rngs({example}), or name "
      "one of its streams with rng_collection="
    ) from err


def _own_stream(
  rngs: nnx.Rngs | nnx.RngStream | None, collection: str, owner: str
) -> nnx.RngStream | None:
  """The stream a member keeps from its constructor's `rngs`: a fork, as Flax's layers keep."""
  if isinstance(rngs, nnx.Rngs):
    return _stream(rngs, collection, owner).fork()
  if isinstance(rngs, nnx.RngStream):
    return rngs.fork()
  if rngs is None:
    return nnx.data(None)
  raise TypeError(f"rngs must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs).__name__}")


def _run(
  module: nnx.Dropout | _Member,
  inputs: jax.Array,
  deterministic: bool | jax.Array | None,
  rngs: Rngs,
  function: Callable[..., jax.Array],
  **options: Any,
) -> jax.Array:
  """Flax's order of decisions, then the functional member `function`.

  The mode first (the call's, else the module's), then the rate; only when units are dropped
  is a key drawn, so the stream advances exactly when Flax's would. A concrete rate of 1 gives
  zeros without a key, as in Flax. A traced `deterministic` goes on to jaxdrop, which takes it.
  """
  name = type(module).__name__
  if deterministic is None:
    deterministic = module.deterministic
  if deterministic is None:
    raise ValueError(
      f"No `deterministic` argument was provided to {name}: pass deterministic= "
      "to its constructor or call, or switch the model with model.train() / "
      "model.eval() or nnx.view(model, deterministic=...)"
    )
  deterministic = check.flag(deterministic, "deterministic")
  rate, rate_value = _rate_value(module.rate, isinstance(module, ConcreteDropout))
  if deterministic is True or rate_value == 0.0:
    return inputs
  if deterministic is False and rate_value == 1.0:
    return jnp.zeros_like(check.float_array(inputs, "inputs"))
  rngs = module.rngs if rngs is None else rngs
  if rngs is None:
    raise ValueError(
      f"`deterministic` is False, but no `rngs` argument was provided to {name} "
      "as either a __call__ argument or class attribute: construct it with "
      f"rngs=nnx.Rngs(params=0, {module.rng_collection}=1), call it with "
      f"rngs=nnx.Rngs({module.rng_collection}=1), or switch it off with "
      "model.eval() / deterministic=True"
    )
  if isinstance(rngs, nnx.Rngs):
    key = _stream(rngs, module.rng_collection, name)()
  elif isinstance(rngs, nnx.RngStream):
    key = rngs()
  elif isinstance(rngs, jax.Array):
    key = rngs
  else:
    raise TypeError(
      f"rngs must be an nnx.Rngs, an nnx.RngStream or a key, got {type(rngs).__name__}"
    )
  return function(key, inputs, rate, deterministic=deterministic, **options)


class Dropout(nnx.Dropout):
  """``nnx.Dropout`` with jaxdrop's mask: same arguments, same mode switches, same streams.

  Args:
    rate: the probability of DROPPING each unit, in [0, 1]; a float, or an array or
      ``nnx.Variable`` to change it without retracing (a traced value outside [0, 1] makes the
      output NaN: `jaxdrop.dropout` says how to find it).
    broadcast_dims: axes that share one mask value.
    deterministic: True for no dropout; ``model.eval()`` / ``model.train()`` set it.
    rng_collection: the ``nnx.Rngs`` stream keys are drawn from (default ``"dropout"``).
    rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None to pass
      `rngs` at each call.

  Calling it with ``(inputs, *, deterministic=None, rngs=None)`` returns
  ``jaxdrop.dropout(key, inputs, rate, broadcast_dims=broadcast_dims)`` with the next key of
  the stream; call-time `deterministic` and `rngs` (an ``nnx.Rngs``, an ``nnx.RngStream`` or
  a key) take precedence over the constructor's.

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.ones((2, 8)))
    >>> bool(jnp.all((y == 0) | (y == 2)))
    True
    >>> layer.eval()
    >>> bool(jnp.all(layer(jnp.ones((2, 8))) == 1))
    True
  """

  def __init__(
    self,
    rate: float,
    *,
    broadcast_dims: Sequence[int] = (),
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ) -> None:
    _rate_value(rate)
    if isinstance(rngs, nnx.Rngs):
      _stream(rngs, rng_collection, type(self).__name__)  # Flax's own check is a bare KeyError
    super().__init__(
      rate,
      broadcast_dims=broadcast_dims,
      deterministic=deterministic,
      rng_collection=rng_collection,
      rngs=rngs,
    )

  def __call__(
    self, inputs: jax.Array, *, deterministic: bool | None = None, rngs: Rngs = None
  ) -> jax.Array:
    return _run(self, inputs, deterministic, rngs, dropout, broadcast_dims=self.broadcast_dims)


class _Member(nnx.Module):
  """What every family module shares with ``nnx.Dropout``: rate, mode, stream and collection.

  A member names its functional (`_function`) and the attributes passed to it as keywords
  (`_options`).
  """

  _function: ClassVar[Callable[..., jax.Array]]  # the jaxdrop function each subclass wraps
  _options: ClassVar[tuple[str, ...]] = ()

  def __init__(
    self,
    rate: float,
    *,
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ) -> None:
    _rate_value(rate)
    self.rate = rate
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    self.rngs = _own_stream(rngs, rng_collection, type(self).__name__)

  def set_view(self, deterministic: bool | None = None) -> None:
    """Called by ``nnx.view`` to set the mode of a view of the model.

    Args:
      deterministic: True turns the member off, False on; None leaves it.
    """
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(
    self, inputs: jax.Array, *, deterministic: bool | None = None, rngs: Rngs = None
  ) -> jax.Array:
    options = {name: getattr(self, name) for name in self._options}
    return _run(self, inputs, deterministic, rngs, self._function, **options)


class _PerChannel(_Member):
  """A member with one decision per (example, channel)."""

  _options = ("channel_axis", "batch_axis")

  def __init__(
    self,
    rate: float,
    *,
    channel_axis: int = -1,
    batch_axis: int | None = 0,
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ) -> None:
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)
    self.channel_axis, self.batch_axis = channel_axis, batch_axis


class ChannelDropout(_PerChannel):
  """`jaxdrop.channel_dropout` as an NNX module: drops whole channels, one draw per example.

  Args:
    rate: the probability of DROPPING each channel of each example; a float, or an array or
      ``nnx.Variable``, as for `Dropout`. A traced value outside [0, 1] makes the output NaN
      (`jaxdrop.dropout` says how to find it).
    channel_axis, batch_axis: as for `jaxdrop.channel_dropout`.
    deterministic, rng_collection, rngs: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.ChannelDropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.ones((2, 3, 4)))          # (example, position, channel)
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> layer.eval()
    >>> bool(jnp.all(layer(jnp.ones((2, 3, 4))) == 1))
    True
  """

  _function = staticmethod(channel_dropout)


class FeatureAlphaDropout(_PerChannel):
  """`jaxdrop.feature_alpha_dropout` as an NNX module: alpha dropout of whole channels.

  Args:
    rate: the probability of DROPPING each channel of each example; a float, or an array or
      ``nnx.Variable``, as for `Dropout`. A traced value outside [0, 1] makes the output NaN
      (`jaxdrop.dropout` says how to find it).
    channel_axis, batch_axis: as for `jaxdrop.feature_alpha_dropout`.
    deterministic, rng_collection, rngs: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.FeatureAlphaDropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.zeros((2, 3, 4)))         # (example, position, channel)
    >>> bool(jnp.all(y.min(1) == y.max(1)))     # one value per (example, channel)
    True
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> layer.eval()
    >>> bool(jnp.all(layer(jnp.ones((2, 3, 4))) == 1))
    True
  """

  _function = staticmethod(feature_alpha_dropout)


class AlphaDropout(_Member):
  """`jaxdrop.alpha_dropout` as an NNX module: dropout for SELU networks.

  Args:
    rate: the probability of DROPPING each unit, as for `jaxdrop.alpha_dropout`; a float, or an
      array or ``nnx.Variable``, as for `Dropout`. A traced value outside [0, 1] makes the output
      NaN (`jaxdrop.dropout` says how to find it).
    deterministic, rng_collection, rngs: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.AlphaDropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.zeros((2, 8)))
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> layer.eval()
    >>> bool(jnp.all(layer(jnp.ones((2, 8))) == 1))
    True
  """

  _function = staticmethod(alpha_dropout)


class GaussianDropout(_Member):
  """`jaxdrop.gaussian_dropout` as an NNX module: multiplicative Gaussian noise.

  Args:
    rate: in [0, 1], as for `jaxdrop.gaussian_dropout` (the noise variance is rate / (1 - rate)); a
      float, or an array or ``nnx.Variable``, as for `Dropout`. A traced value outside [0, 1] makes
      the output NaN (`jaxdrop.dropout` says how to find it).
    deterministic, rng_collection, rngs: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.GaussianDropout(0.5, rngs=nnx.Rngs(dropout=0))
    >>> x, key = jnp.arange(1.0, 9.0), jax.random.key(0)
    >>> y = layer(x, rngs=key)                  # a key given at call time
    >>> bool(jnp.all(layer(2 * x, rngs=key) == 2 * y))   # same key, same noise, times 2x
    True
    >>> layer.eval()
    >>> bool(jnp.all(layer(x) == x))
    True
  """

  _function = staticmethod(gaussian_dropout)


class DropPath(_Member):
  """`jaxdrop.drop_path` as an NNX module: stochastic depth on a residual branch.

  Args:
    rate: the probability of DROPPING the branch; a float, or an array or ``nnx.Variable``, as for
      `Dropout`. A traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to
      find it).
    batch_axis, mode: as for `jaxdrop.drop_path`.
    deterministic, rng_collection, rngs: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.DropPath(0.5, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.ones((4, 3)))             # the branch's output, 4 examples
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> layer.eval()
    >>> bool(jnp.all(layer(jnp.ones((4, 3))) == 1))
    True
  """

  _function = staticmethod(drop_path)
  _options = ("batch_axis", "mode")

  def __init__(
    self,
    rate: float,
    *,
    batch_axis: int = 0,
    mode: Literal["row", "batch"] = "row",
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ) -> None:
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)
    self.batch_axis, self.mode = batch_axis, mode


class DropBlock(_Member):
  """`jaxdrop.drop_block` as an NNX module: drops square blocks of NHWC feature maps.

  ``DropBlock(rate, block_size=7)`` (7, timm's default, in every framework's DropBlock here);
  `spatial_axes` as for `jaxdrop.drop_block`.

  Args:
    rate: the expected fraction of units to drop; a float, or an array or ``nnx.Variable``, as for
      `Dropout`. A traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to
      find it).
    block_size, spatial_axes: as for `jaxdrop.drop_block` (NHWC by default).
    deterministic, rng_collection, rngs: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.DropBlock(0.25, 3, rngs=nnx.Rngs(dropout=0))
    >>> y = layer(jnp.ones((1, 6, 6, 1)))
    >>> print((y[0, :, :, 0] == 0).astype(int))   # dropped units: a 3 x 3 block
    [[0 0 0 0 0 0]
     [0 0 1 1 1 0]
     [0 0 1 1 1 0]
     [0 0 1 1 1 0]
     [0 0 0 0 0 0]
     [0 0 0 0 0 0]]
    >>> layer.eval()
    >>> bool(jnp.all(layer(jnp.ones((1, 6, 6, 1))) == 1))
    True
  """

  _function = staticmethod(drop_block)
  _options = ("block_size", "spatial_axes")

  def __init__(
    self,
    rate: float,
    block_size: int = 7,
    *,
    spatial_axes: Sequence[int] = (1, 2),
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ) -> None:
    super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)
    self.block_size, self.spatial_axes = block_size, tuple(spatial_axes)


class ConcreteDropout(_Member):
  """`jaxdrop.concrete_dropout` as an NNX module whose rate is a trainable ``nnx.Param``.

  The rate is ``sigmoid(rate_logit)``, with ``rate_logit`` an ``nnx.Param`` that the
  optimizer updates with the other parameters (``nnx.Optimizer(model, tx, wrt=nnx.Param)``).
  Add `regularizer` of the layer that the dropped units feed to the loss (Gal et al.'s
  objective): it is what keeps the rate from falling to 0.

  Args:
    init_rate: the rate training starts from, in (0, 1) (0.1, as Gal et al.'s reference code).
    rate_shape: the shape of the learned rates, broadcast against the inputs: ``()`` (one rate
      for the layer, the reference code's) or one rate per unit, ``(features,)`` (per channel
      of a feature map too).
    temperature: the relaxation's temperature (0.1; 2/3 for the spatial form).
    broadcast_dims: axes that share one noise value (the spatial axes for the spatial form).
    weight_regularizer: the weight term's factor, ``l**2 / N`` for N training examples and a
      prior length scale l (the reference class's default 1e-6).
    dropout_regularizer: the entropy term's factor, ``2 / N`` (the reference class's default
      1e-5).
    deterministic, rng_collection, rngs: as for `Dropout`; ``model.eval()`` returns the inputs
      unchanged, ``model.train()`` samples. For MC-dropout predictions keep it in training mode
      (or call with ``deterministic=False``).

  Examples:
    >>> import jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = jaxdrop.nnx.ConcreteDropout(init_rate=0.2, rngs=nnx.Rngs(dropout=0))
    >>> round(float(layer.rate), 6)
    0.2
    >>> y = layer(jnp.ones((4, 8)))
    >>> grads = nnx.grad(lambda m: jnp.var(m(jnp.ones((64, 64)))))(layer)
    >>> bool(grads["rate_logit"][...] > 0)  # a higher rate, noisier activations
    True
    >>> layer.eval()
    >>> bool(jnp.all(layer(jnp.ones((4, 8))) == 1))
    True
  """

  _function = staticmethod(concrete_dropout)
  _options = ("temperature", "broadcast_dims")

  def __init__(
    self,
    *,
    init_rate: float = 0.1,
    rate_shape: Sequence[int] = (),
    temperature: float = 0.1,
    broadcast_dims: Sequence[int] = (),
    weight_regularizer: float = 1e-6,
    dropout_regularizer: float = 1e-5,
    deterministic: bool | None = False,
    rng_collection: str = "dropout",
    rngs: nnx.Rngs | nnx.RngStream | None = None,
  ) -> None:
    self.rate_logit = nnx.Param(initial_logit(init_rate, rate_shape))
    self.temperature, self.broadcast_dims = temperature, tuple(broadcast_dims)
    self.weight_regularizer, self.dropout_regularizer = weight_regularizer, dropout_regularizer
    self.deterministic = deterministic
    self.rng_collection = rng_collection
    self.rngs = _own_stream(rngs, rng_collection, type(self).__name__)

  @property
  def rate(self) -> jax.Array:  # type: ignore[override]
    """The current drop rates, ``sigmoid(rate_logit)``."""
    return jax.nn.sigmoid(self.rate_logit[...])

  def regularizer(
    self, kernel: ArrayLike | nnx.Variable, *, input_dim: int | None = None
  ) -> jax.Array:
    """`jaxdrop.concrete_dropout_regularizer` at this layer's rates, for the `kernel` of the
    layer its output feeds; `input_dim` defaults to ``kernel.shape[-2]``, the input features
    of an ``nnx.Linear`` kernel ``(in, out)`` and the input channels of an ``nnx.Conv``, the
    axis along which per-unit rates are laid."""
    kernel = kernel[...] if isinstance(kernel, nnx.Variable) else kernel
    return module_regularizer(
      self.rate, kernel, -2, input_dim, self.weight_regularizer, self.dropout_regularizer
    )


def attention_fn(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  bias: jax.Array | None = None,
  mask: jax.Array | None = None,
  broadcast_dropout: bool = True,
  dropout_rng: jax.Array | None = None,
  dropout_rate: ArrayLike = 0.0,
  deterministic: bool = False,
  dtype: DTypeLike | None = None,
  precision: PrecisionLike = None,
  module: nnx.Module | None = None,
  promote_dtype: PromoteDtypeFn = _flax_dtypes.promote_dtype,
  is_causal: bool = False,
  *,
  implementation: Literal["xla", "chunked", "pallas"] | None = None,
  query_chunk_size: int | None = None,
  key_chunk_size: int | None = None,
) -> jax.Array:
  """``nnx.dot_product_attention``'s signature over `jaxdrop.dot_product_attention`.

  Pass it as ``nnx.MultiHeadAttention(..., attention_fn=jaxdrop.nnx.attention_fn)``: the
  attention weights are dropped with jaxdrop's mask (shared by every example and head when
  `broadcast_dropout`, as in Flax), and the chunked implementation, chosen by default above
  2**24 weights, never builds the T x S matrix. Arrays are ``[batch..., length, heads, depth]``
  with any number of batch axes. With `module` (``sow_weights=True``) the pre-dropout weights
  are sown into ``nnx.Intermediate`` as Flax sows them, which builds them once more.
  `implementation` and the chunk sizes go to `jaxdrop.dot_product_attention`
  (``functools.partial`` sets them).

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> from flax import nnx
    >>> layer = nnx.MultiHeadAttention(num_heads=2, in_features=8, dropout_rate=0.1,
    ...                                attention_fn=jaxdrop.nnx.attention_fn,
    ...                                decode=False, rngs=nnx.Rngs(0))
    >>> layer.train()                       # or deterministic=False
    >>> layer(jnp.ones((1, 5, 8))).shape
    (1, 5, 8)
  """
  query, key, value = promote_dtype((query, key, value), dtype=dtype)
  if module is not None:
    _flax_weights(
      query,
      key,
      bias,
      mask,
      dtype=dtype,
      precision=precision,
      module=module,
      promote_dtype=promote_dtype,
      is_causal=is_causal,
    )
  return flax_attention(
    query,
    key,
    value,
    bias,
    mask,
    broadcast_dropout=broadcast_dropout,
    dropout_rng=dropout_rng,
    dropout_rate=dropout_rate,
    deterministic=deterministic,
    precision=precision,
    is_causal=is_causal,
    implementation=implementation,
    query_chunk_size=query_chunk_size,
    key_chunk_size=key_chunk_size,
  )
