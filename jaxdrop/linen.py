"""Flax Linen modules over jaxdrop: ``nn.Dropout`` and the family, with Linen's conventions.

Swap ``nn.Dropout`` for ``jaxdrop.linen.Dropout``: the same attributes (``rate``,
``broadcast_dims``, ``deterministic``, ``rng_collection``), the same call (``deterministic``
merged with the attribute as ``nn.merge_param`` merges it, an optional ``rng``), keys from
``self.make_rng(rng_collection)``, so ``apply(..., rngs={"dropout": key})`` drives it as it drove
Flax's. It subclasses ``nn.Dropout``. Only the mask changes: jaxdrop's, with its key-only
backward pass; a traced rate works too.

The family follows the same conventions, and `attention_fn` has the signature of
``nn.dot_product_attention`` for ``nn.MultiHeadDotProductAttention(attention_fn=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

try:
  import flax.linen as nn
except ImportError as err:  # the core needs jax alone; the adapter needs its framework
  raise ImportError('jaxdrop.linen needs Flax: pip install "jaxdrop[flax]"') from err
from flax.linen import dtypes as _flax_dtypes
from flax.linen.attention import dot_product_attention_weights as _flax_weights
from flax.typing import PrecisionLike

from . import _validate as check
from ._alpha import alpha_dropout, feature_alpha_dropout
from ._block import drop_block
from ._concrete import concrete_dropout, initial_logit, module_regularizer
from ._dropout import dropout
from ._flax_attention import flax_attention, no_custom_einsums
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


def _run(
  module: nn.Dropout | _Member,
  inputs: jax.Array,
  deterministic: bool | None,
  rng: jax.Array | None,
  function: Callable[..., jax.Array],
  **options: Any,
) -> jax.Array:
  """Linen's order of decisions, then the functional member `function`.

  The merged mode first, then the rate; only when units are dropped is a key made (a
  concrete rate of 1 gives zeros without one, as in Flax). A traced `deterministic` goes on to
  jaxdrop, which takes it.
  """
  flag = check.flag(
    nn.merge_param("deterministic", module.deterministic, deterministic), "deterministic"
  )
  rate = module.rate
  rate_value = check.probability(rate, "rate")
  if flag is True or rate_value == 0.0:
    return inputs
  if flag is False and rate_value == 1.0:
    return jnp.zeros_like(check.float_array(inputs, "inputs"))
  if rng is None:
    rng = module.make_rng(module.rng_collection)
  return function(rng, inputs, rate, deterministic=flag, **options)


class Dropout(nn.Dropout):
  """``nn.Dropout`` with jaxdrop's mask: same attributes, same call, same ``make_rng`` keys.

  Attributes:
    rate: the probability of DROPPING each unit, in [0, 1] (may be traced; a traced value
      outside [0, 1] makes the output NaN: `jaxdrop.dropout` says how to find it).
    broadcast_dims: axes that share one mask value.
    deterministic: True for no dropout; or None to pass it at call time.
    rng_collection: the collection keys are made from (default ``"dropout"``).

  Calling it with ``(inputs, deterministic=None, rng=None)`` returns
  ``jaxdrop.dropout(rng or self.make_rng(rng_collection), inputs, rate,
  broadcast_dims=broadcast_dims)``.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.Dropout(0.5)
    >>> y = layer.apply({}, jnp.ones((2, 8)), deterministic=False,
    ...                 rngs={"dropout": jax.random.key(0)})
    >>> bool(jnp.all((y == 0) | (y == 2)))
    True
  """

  def __call__(
    self, inputs: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
  ) -> jax.Array:
    return _run(self, inputs, deterministic, rng, dropout, broadcast_dims=self.broadcast_dims)


class _Member(nn.Module):
  """What every family module shares with ``nn.Dropout``: rate, mode and collection.

  A member names its functional (`_function`) and the attributes passed to it as keywords
  (`_options`).
  """

  rate: float
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  # Class variables, not fields: the jaxdrop function a subclass wraps and its field options.
  _function: ClassVar[Callable[..., jax.Array]]
  _options: ClassVar[tuple[str, ...]] = ()

  def __call__(
    self, inputs: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
  ) -> jax.Array:
    options = {name: getattr(self, name) for name in self._options}
    return _run(self, inputs, deterministic, rng, self._function, **options)


class _PerChannel(_Member):
  """A member with one decision per (example, channel)."""

  channel_axis: int = -1
  batch_axis: int | None = 0
  _options = ("channel_axis", "batch_axis")


class ChannelDropout(_PerChannel):
  """`jaxdrop.channel_dropout` as a Linen module: drops whole channels, one draw per example.

  Attributes:
    rate: the probability of DROPPING each channel of each example (may be traced). A traced value
      outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to find it).
    channel_axis, batch_axis: as for `jaxdrop.channel_dropout`.
    deterministic, rng_collection: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.ChannelDropout(0.5)
    >>> x = jnp.ones((2, 3, 4))                 # (example, position, channel)
    >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
    True
  """

  _function = staticmethod(channel_dropout)


class FeatureAlphaDropout(_PerChannel):
  """`jaxdrop.feature_alpha_dropout` as a Linen module: alpha dropout of whole channels.

  Attributes:
    rate: the probability of DROPPING each channel of each example (may be traced). A traced value
      outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to find it).
    channel_axis, batch_axis: as for `jaxdrop.feature_alpha_dropout`.
    deterministic, rng_collection: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.FeatureAlphaDropout(0.5)
    >>> x = jnp.zeros((2, 3, 4))                # (example, position, channel)
    >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> bool(jnp.all(y.min(1) == y.max(1)))     # one value per (example, channel)
    True
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> bool(jnp.all(layer.apply({}, x + 1, deterministic=True) == x + 1))
    True
  """

  _function = staticmethod(feature_alpha_dropout)


class AlphaDropout(_Member):
  """`jaxdrop.alpha_dropout` as a Linen module: dropout for SELU networks.

  Attributes:
    rate: the probability of DROPPING each unit, as for `jaxdrop.alpha_dropout` (may be traced). A
      traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to find it).
    deterministic, rng_collection: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.AlphaDropout(0.5)
    >>> x = jnp.zeros((2, 8))
    >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> print(jnp.unique(y.round(2)))           # kept: b; dropped: a * alpha' + b
    [-0.78  0.78]
    >>> bool(jnp.all(layer.apply({}, x + 1, deterministic=True) == x + 1))
    True
  """

  _function = staticmethod(alpha_dropout)


class GaussianDropout(_Member):
  """`jaxdrop.gaussian_dropout` as a Linen module: multiplicative Gaussian noise.

  Attributes:
    rate: in [0, 1], as for `jaxdrop.gaussian_dropout` (the noise variance is rate / (1 - rate); may
      be traced). A traced value outside [0, 1] makes the output NaN (`jaxdrop.dropout` says how to
      find it).
    deterministic, rng_collection: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.GaussianDropout(0.5)
    >>> x, rngs = jnp.arange(1.0, 9.0), {"dropout": jax.random.key(0)}
    >>> y = layer.apply({}, x, deterministic=False, rngs=rngs)
    >>> y2 = layer.apply({}, 2 * x, deterministic=False, rngs=rngs)
    >>> bool(jnp.all(y2 == 2 * y))              # same key, same noise, times 2x
    True
    >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
    True
  """

  _function = staticmethod(gaussian_dropout)


class DropPath(_Member):
  """`jaxdrop.drop_path` as a Linen module: stochastic depth on a residual branch.

  Attributes:
    rate: the probability of DROPPING the branch (may be traced). A traced value outside [0, 1]
      makes the output NaN (`jaxdrop.dropout` says how to find it).
    batch_axis, mode: as for `jaxdrop.drop_path`.
    deterministic, rng_collection: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.DropPath(0.5)
    >>> x = jnp.ones((4, 3))                    # the branch's output, 4 examples
    >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> bool(jnp.all((y.min(1) == y.max(1)) & ((y[:, 0] == 0) | (y[:, 0] == 2))))
    True
    >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
    True
  """

  batch_axis: int = 0
  mode: Literal["row", "batch"] = "row"
  _function = staticmethod(drop_path)
  _options = ("batch_axis", "mode")


class DropBlock(_Member):
  """`jaxdrop.drop_block` as a Linen module: drops square blocks of NHWC feature maps.

  ``DropBlock(rate, block_size=7)`` (7, timm's default, in every framework's DropBlock here);
  `spatial_axes` as for `jaxdrop.drop_block`.

  Attributes:
    rate: the expected fraction of units to drop (may be traced). A traced value outside [0, 1]
      makes the output NaN (`jaxdrop.dropout` says how to find it).
    block_size, spatial_axes: as for `jaxdrop.drop_block` (NHWC by default), by keyword (the
      second positional field is `deterministic`).
    deterministic, rng_collection: as for `Dropout`, and so is the call.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.DropBlock(0.25, block_size=3)
    >>> x = jnp.ones((1, 6, 6, 1))
    >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)})
    >>> print((y[0, :, :, 0] == 0).astype(int))   # dropped units: a 3 x 3 block
    [[0 0 0 0 0 0]
     [0 0 0 0 0 0]
     [0 1 1 1 0 0]
     [0 1 1 1 0 0]
     [0 1 1 1 0 0]
     [0 0 0 0 0 0]]
    >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
    True
  """

  block_size: int = 7
  spatial_axes: Sequence[int] = (1, 2)
  _function = staticmethod(drop_block)
  _options = ("block_size", "spatial_axes")


class ConcreteDropout(nn.Module):
  """`jaxdrop.concrete_dropout` as a Linen module whose rate is a trainable parameter.

  The rate is ``sigmoid(rate_logit)``, with ``rate_logit`` in the ``"params"`` collection,
  trained with the other parameters. Add `regularizer` of the layer the dropped units feed to
  the loss (Gal et al.'s objective): it is what keeps the rate from falling to 0.

  Attributes:
    init_rate: the rate training starts from, in (0, 1) (0.1, as Gal et al.'s reference code).
    rate_shape: the shape of the learned rates, broadcast against the inputs: ``()`` (one rate
      for the layer, the reference code's) or one rate per unit, ``(features,)`` (per channel
      of a feature map too).
    temperature: the relaxation's temperature (0.1; 2/3 for the spatial form).
    broadcast_dims: axes that share one noise value (the spatial axes for the spatial form).
    weight_regularizer: the weight term's factor, ``l**2 / N`` for N training examples and a
      prior length scale l (the reference class's default 1e-6).
    dropout_regularizer: the entropy term's factor, ``2 / N`` (default 1e-5).
    deterministic, rng_collection: as for `Dropout`, and so is the call; deterministic
      returns the inputs unchanged. For MC-dropout predictions call with
      ``deterministic=False``.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop.linen
    >>> layer = jaxdrop.linen.ConcreteDropout(init_rate=0.2)
    >>> params = layer.init(jax.random.key(0), jnp.ones((4, 8)), deterministic=True)
    >>> rngs = {"dropout": jax.random.key(1)}
    >>> y = layer.apply(params, jnp.ones((4, 8)), deterministic=False, rngs=rngs)
    >>> round(float(jax.nn.sigmoid(params["params"]["rate_logit"])), 6)
    0.2
    >>> r = layer.apply(params, jnp.ones((8, 3)), method=layer.regularizer)
    >>> bool(r < 0)  # the entropy term dominates at these small factors
    True
  """

  init_rate: float = 0.1
  rate_shape: Sequence[int] = ()
  temperature: float = 0.1
  broadcast_dims: Sequence[int] = ()
  weight_regularizer: float = 1e-6
  dropout_regularizer: float = 1e-5
  deterministic: bool | None = None
  rng_collection: str = "dropout"

  def _rate(self) -> jax.Array:
    logit = self.param("rate_logit", lambda _: initial_logit(self.init_rate, self.rate_shape))
    return jax.nn.sigmoid(logit)

  @nn.compact
  def __call__(
    self, inputs: jax.Array, deterministic: bool | None = None, rng: jax.Array | None = None
  ) -> jax.Array:
    rate = self._rate()
    flag = check.flag(
      nn.merge_param("deterministic", self.deterministic, deterministic), "deterministic"
    )
    if flag is True:
      return inputs
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    return concrete_dropout(
      rng,
      inputs,
      rate,
      temperature=self.temperature,
      broadcast_dims=self.broadcast_dims,
      deterministic=flag,
    )

  def regularizer(self, kernel: ArrayLike, *, input_dim: int | None = None) -> jax.Array:
    """`jaxdrop.concrete_dropout_regularizer` at this layer's rates, for the `kernel` of the
    layer its output feeds; `input_dim` defaults to ``kernel.shape[-2]``, the input features
    of an ``nn.Dense`` kernel ``(in, out)`` and the input channels of an ``nn.Conv``, the axis
    along which per-unit rates are laid. Call it on the bound module (``apply(...,
    method=...)``, or from the parent's ``__call__``)."""
    logit: jax.Array | None = self.get_variable("params", "rate_logit")
    if logit is None:
      raise ValueError(
        "ConcreteDropout.regularizer needs the layer's parameters: call it on a bound module "
        "whose variables hold params/rate_logit (initialise it with init first)"
      )
    return module_regularizer(
      jax.nn.sigmoid(logit),
      kernel,
      -2,
      input_dim,
      self.weight_regularizer,
      self.dropout_regularizer,
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
  module: nn.Module | None = None,
  force_fp32_for_softmax: bool = False,
  einsum_dot_general: Callable[..., jax.Array] | None = None,
  qk_attn_weights_einsum: Callable[..., jax.Array] | None = None,
  attn_weights_value_einsum: Callable[..., jax.Array] | None = None,
  *,
  is_causal: bool = False,
  implementation: Literal["xla", "chunked", "pallas"] | None = None,
  query_chunk_size: int | None = None,
  key_chunk_size: int | None = None,
) -> jax.Array:
  """``nn.dot_product_attention``'s signature over `jaxdrop.dot_product_attention`.

  Pass it as ``nn.MultiHeadDotProductAttention(..., attention_fn=jaxdrop.linen.attention_fn)``.
  As `jaxdrop.nnx.attention_fn`: jaxdrop's mask on the attention weights (shared by every
  example and head when `broadcast_dropout`), the chunked implementation above 2**24 weights,
  ``[batch..., length, heads, depth]`` arrays. The softmax is always computed in float32, so
  `force_fp32_for_softmax` changes only the dtype of weights sown with `module`
  (``sow_weights=True``, which builds them once more, before dropout, as Flax sows them).
  The custom einsum hooks cannot apply (the weights are never an einsum operand) and raise.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, jaxdrop.linen
    >>> layer = nn.MultiHeadDotProductAttention(num_heads=2, dropout_rate=0.1,
    ...                                         attention_fn=jaxdrop.linen.attention_fn)
    >>> x = jnp.ones((1, 5, 8))
    >>> params = layer.init(jax.random.key(0), x, deterministic=True)
    >>> layer.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)}).shape
    (1, 5, 8)
  """
  no_custom_einsums(
    einsum_dot_general=einsum_dot_general,
    qk_attn_weights_einsum=qk_attn_weights_einsum,
    attn_weights_value_einsum=attn_weights_value_einsum,
  )
  query, key, value = _flax_dtypes.promote_dtype(query, key, value, dtype=dtype)
  if module is not None:
    sown_mask = mask
    if is_causal:  # Linen's weights function has no is_causal: the same as a mask
      causal = jnp.tril(jnp.ones((query.shape[-3], key.shape[-3]), jnp.bool_))
      sown_mask = causal if mask is None else jnp.logical_and(mask, causal)
    _flax_weights(
      query,
      key,
      bias,
      sown_mask,
      dtype=dtype,
      precision=precision,
      module=module,
      force_fp32_for_softmax=force_fp32_for_softmax,
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
