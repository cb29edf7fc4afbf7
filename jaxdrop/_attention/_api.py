"""`dot_product_attention`: the public function, its argument checks, and the choice of
implementation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import _validate as check
from .._core import _JAX_JVP_ERROR
from .._dropout import bernoulli_scalars, block_position, checked_key, require_key
from .._keys import mask_words
from .._mask import drop_threshold
from ._chunked import _chunked_attention, _partitioned_inside
from ._reference import _xla_attention

IMPLEMENTATIONS = ("xla", "chunked", "pallas")
_CHUNK_DEFAULT = 512  # the chunked implementation's block sizes

# Above this many attention weights per call (B * N * T * S) the default implementation is
# "chunked": 2**24 float32 weights are 64 MiB, plus as much again for their gradient.
_CHUNKED_ABOVE = 2**24


def _four_d(a: jax.Array, name: str, target: tuple[int, ...]) -> jax.Array:
  """`a` with leading axes of size 1 up to four (as jax.nn does), checked to broadcast to the
  weights' (B, N, T, S) with its head axis 1 or N."""
  if a.ndim > 4 or any(d not in (1, want) for d, want in zip(a.shape[::-1], target[::-1])):
    raise ValueError(
      f"{name} must broadcast to the attention weights' shape {target} "
      f"(B, N, T, S), with its head axis 1 or N, got shape {a.shape}"
    )
  return a.reshape((1,) * (4 - a.ndim) + a.shape)


def _check_lengths(a: ArrayLike | None, name: str, batch: int) -> jax.Array | None:
  if a is None:
    return None
  a = jnp.asarray(a)
  if not jnp.issubdtype(a.dtype, jnp.integer) or a.shape != (batch,):
    raise ValueError(
      f"{name} must be an integer array of shape ({batch},) (one length per "
      f"batch element), got {a.dtype.name} array of shape {a.shape}"
    )
  return a.astype(jnp.int32)


def _weights_spec(
  shard_spec: jax.sharding.PartitionSpec | None, batched: bool
) -> jax.sharding.PartitionSpec | None:
  """The `PartitionSpec` of the (B, N, T, S) weights from `query`'s, which may split only
  the batch and head axes."""
  shard_spec = check.partition_spec(shard_spec, 4 if batched else 3, "shard_spec")
  if shard_spec is None:
    return None
  entries = tuple(shard_spec) + (None,) * ((4 if batched else 3) - len(shard_spec))
  if not batched:
    entries = (None, *entries)
  if entries[1] is not None or entries[3] is not None:
    raise ValueError(
      "dot_product_attention's shard_spec (query's in_spec) may split only the "
      "batch and head axes; the sequence and head-dimension axes must be whole, "
      f"got {shard_spec!r}"
    )
  return jax.sharding.PartitionSpec(entries[0], entries[2], None, None)


def _chunk_size(value: object, name: str) -> int | None:
  if value is None:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
  return int(value)


def _pallas_arguments(q: jax.Array, k: jax.Array, bias: jax.Array | None) -> None:
  """What the Pallas kernels cannot take, as errors naming the argument."""
  if bias is not None:
    raise ValueError(
      "implementation='pallas' does not take a bias yet (its gradient would need a reduction "
      "across kernel programs); pass implementation='chunked' (no (T, S) array built) or "
      "'xla', or express it as a boolean mask, is_causal or the sequence lengths"
    )
  axes = ("batch", "length", "heads", "head size")
  for name, shape in (("query", q.shape), ("key", k.shape)):
    for axis, size in zip(axes, shape):
      if jax.export.is_symbolic_dim(size):
        raise ValueError(
          f"implementation='pallas' needs concrete sizes (its kernels' grid and blocks are "
          f"fixed when they are compiled), got {name} {axis} {size} (symbolic, jax.export); "
          "pass implementation='chunked', which takes symbolic batch and lengths"
        )


def _default_implementation(weights_shape: tuple[Any, ...]) -> Literal["xla", "chunked"]:
  """``"chunked"`` above `_CHUNKED_ABOVE` weights ``(B, N, T, S)``, ``"xla"`` below, decided
  without comparing a symbolic size (`jax.export`): a symbolic T or S picks ``"chunked"``,
  whose memory stays linear in them at any length the artifact is served with; a symbolic
  batch or head count counts as 1 (both implementations' memory is linear in them)."""
  symbolic = [jax.export.is_symbolic_dim(d) for d in weights_shape]
  if symbolic[2] or symbolic[3]:
    return "chunked"
  count = math.prod(1 if sym else d for d, sym in zip(weights_shape, symbolic))
  return "chunked" if count > _CHUNKED_ABOVE else "xla"


def _arrays(query: ArrayLike, key: ArrayLike, value: ArrayLike) -> tuple[Any, Any, Any, bool]:
  """query, key and value checked, batched ``(B, T|S, heads, H)``; and whether they were."""
  q = check.float_array(query, "query")
  k = check.float_array(key, "key")
  v = check.float_array(value, "value")
  if not q.ndim == k.ndim == v.ndim or q.ndim not in (3, 4):
    raise ValueError(
      "query, key and value must all be (B, T|S, heads, H) or all unbatched "
      f"(T|S, heads, H), got shapes {q.shape}, {k.shape}, {v.shape}"
    )
  if not q.dtype == k.dtype == v.dtype:
    raise TypeError(
      f"query, key and value must share one dtype, got {q.dtype.name}, "
      f"{k.dtype.name}, {v.dtype.name}"
    )
  batched = q.ndim == 4
  if not batched:
    q, k, v = q[None], k[None], v[None]
  b, _, n, h = q.shape
  if k.shape != v.shape or k.shape[0] != b or k.shape[3] != h:
    raise ValueError(
      f"key and value must have shape (B, S, K, H) = ({b}, S, K, {h}) to match "
      f"query {q.shape}, got key {k.shape} and value {v.shape}"
    )
  if k.shape[2] == 0:
    raise ValueError(f"key and value must have at least one head, got key {k.shape}")
  if n % k.shape[2]:
    raise ValueError(
      f"the number of query heads ({n}) must be a multiple of the number of "
      f"key/value heads ({k.shape[2]})"
    )
  return q, k, v, batched


def _bias_and_mask(
  bias: ArrayLike | None, mask: ArrayLike | None, weights_shape: tuple[int, ...]
) -> tuple[jax.Array | None, jax.Array | None]:
  """`bias` (float) and `mask` (boolean) checked and made four-dimensional."""
  if bias is not None:
    check.not_a_key(bias, "bias", "an additive bias")
    bias = jnp.asarray(bias)
    if jnp.issubdtype(bias.dtype, jnp.integer) or bias.dtype == jnp.bool_:
      bias = bias.astype(jnp.float32)  # jax.nn adds any numeric bias to float32 logits
    bias = _four_d(check.float_array(bias, "bias"), "bias", weights_shape)
  if mask is not None:
    check.not_a_key(mask, "mask", "a boolean mask")
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
      raise TypeError(
        f"mask must be boolean (True where attention is allowed), got dtype "
        f"{mask.dtype.name}; pass an additive mask as bias"
      )
    mask = _four_d(mask, "mask", weights_shape)
  return bias, mask


def _scale(scale: Any, h: Any) -> float:
  """The logits' scale: `scale`, checked, or ``1 / sqrt(H)``."""
  if scale is None and jax.export.is_symbolic_dim(h):
    raise ValueError(
      f"scale must be given when the head size is symbolic (jax.export), got head size {h}: "
      "1 / sqrt(H) is a constant of the compiled program"
    )
  if scale is None:
    return 1 / math.sqrt(h) if h else 1.0  # H = 0: empty logits, any scale
  if (
    isinstance(scale, (bool, np.bool_))
    or check.is_traced(scale)
    or np.ndim(scale) != 0
    or not jnp.issubdtype(np.asarray(scale).dtype, np.number)
  ):
    raise TypeError(
      f"scale must be a concrete real number (it is part of the compiled program), got {scale!r}"
    )
  return float(scale)


def _blocked_dropout(
  dropout_key: jax.Array | None,
  rate: ArrayLike,
  deterministic: bool | jax.Array,
  weights_spec: jax.sharding.PartitionSpec | None,
  weights_shape: tuple[Any, ...],
  dims: tuple[int, ...],
) -> tuple[jax.Array | None, Any, tuple[Any, ...]]:
  """What the blocked implementations draw their masks from: the key words, the dropout
  parameters ``(t, any_kept, scale, (batch_offset, head_offset))`` (None without dropout) and
  the whole mask's shape (inside shard_map, the global one)."""
  mask_global = tuple(1 if axis in dims else size for axis, size in enumerate(weights_shape))
  if dropout_key is None:
    return None, None, mask_global
  params, _ = bernoulli_scalars(drop_threshold(rate), jnp.asarray(deterministic), "inverted")
  offsets: tuple[jax.Array, ...] = (jnp.uint32(0), jnp.uint32(0))
  if weights_spec is not None:
    block_offsets, global_shape = block_position(weights_spec, weights_shape, dims)
    offsets, mask_global = block_offsets[:2], tuple(global_shape)  # sequence axes whole
  return mask_words(dropout_key), (*params, offsets), mask_global


def _blocked(
  implementation: str,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array | None,
  mask: jax.Array | None,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
  words: jax.Array | None,
  drop: Any,
  chunks: tuple[int | None, int | None],
  options: dict[str, Any],
) -> jax.Array:
  """``"chunked"`` or ``"pallas"`` on batched arrays, forward mode refused with the way out."""
  try:
    if implementation == "pallas":
      from ._pallas import pallas_attention  # Pallas is imported when first used

      # On a mesh, a kernel is one custom call XLA does not partition: it runs on gathered
      # inputs (explicit axes made auto for it, as for chunked), correct but not split.
      return _partitioned_inside(pallas_attention, q)(
        q, k, v, q_lengths, k_lengths, mask, words, drop,
        block_q=chunks[0], block_k=chunks[1], **options,
      )  # fmt: skip
    return _partitioned_inside(_chunked_attention, q)(
      q, k, v, bias, mask, q_lengths, k_lengths, words, drop,
      q_chunk=chunks[0] or _CHUNK_DEFAULT, k_chunk=chunks[1] or _CHUNK_DEFAULT, **options,
    )  # fmt: skip
  except TypeError as err:
    if _JAX_JVP_ERROR not in str(err):
      raise
    raise TypeError(
      f"jaxdrop.dot_product_attention with implementation={implementation!r} has a "
      "hand-written reverse-mode derivative (jax.grad, jax.vjp); for jax.jvp, jax.jacfwd, "
      "jax.linearize or second derivatives pass implementation='xla' (the same mask)"
    ) from err


def dot_product_attention(
  query: ArrayLike,
  key: ArrayLike,
  value: ArrayLike,
  bias: ArrayLike | None = None,
  mask: ArrayLike | None = None,
  *,
  dropout_key: jax.Array | None = None,
  dropout_rate: ArrayLike = 0.0,
  deterministic: bool | ArrayLike = False,
  broadcast_dims: Sequence[int] = (),
  scale: float | None = None,
  is_causal: bool = False,
  query_seq_lengths: ArrayLike | None = None,
  key_value_seq_lengths: ArrayLike | None = None,
  implementation: Literal["xla", "chunked", "pallas"] | None = None,
  query_chunk_size: int | None = None,
  key_chunk_size: int | None = None,
  shard_spec: jax.sharding.PartitionSpec | None = None,
) -> jax.Array:
  r"""Scaled dot-product attention with dropout on the attention weights.

  .. math::

     \mathrm{out} = \big(\mathrm{dropout}(\mathrm{softmax}(s\, Q K^\top + \text{bias}))\big) V

  for each head, with masked logits set as in `jax.nn.dot_product_attention`, whose
  arguments, shapes and results this function shares: at ``dropout_rate=0`` or
  ``deterministic=True`` it computes the same attention. While training, each weight is
  dropped with probability `dropout_rate` and the kept ones are scaled by
  ``1 / (1 - rate)``; the mask is exactly the one ``jaxdrop.dropout(dropout_key, weights,
  dropout_rate, broadcast_dims=broadcast_dims)`` draws on the ``(B, N, T, S)`` weights
  (``(N, T, S)`` for unbatched input), in every implementation. The derivative is that of
  the same function with the mask held fixed.

  With ``implementation="chunked"`` no ``(T, S)`` array is built, forward or backward:
  blocks of queries meet blocks of keys with an online softmax, the backward pass keeps
  only the output and each row's log-sum-exp, and each block's dropout mask is drawn again
  from the key where it is needed. ``"xla"`` materialises the weights (the reference). The
  default, None, picks ``"chunked"`` when the weights would hold more than 2**24 elements
  (64 MiB in float32) and ``"xla"`` below; with symbolic sizes (`jax.export`) a symbolic T
  or S picks ``"chunked"`` and a symbolic batch counts as 1. The chunked derivative is reverse
  mode only (`jax.grad`, `jax.vjp`): for `jax.jvp`, `jax.jacfwd`, `jax.linearize` or second
  derivatives pass ``implementation="xla"``. Both compute the softmax in float32, as
  `jax.nn.dot_product_attention` does (float64 inputs included); chunked computes the logits
  in float32 too. A ``(T, S)``
  bias or mask is an input of that size, and a bias gets a gradient of its own shape; the
  chunked implementation builds no other ``(T, S)`` array.

  ``implementation="pallas"`` runs the chunked algorithm as Pallas kernels (FlashAttention-2:
  a forward kernel, a dq and a dk/dv kernel) that draw each block's mask inside the kernel
  from the same stream: Triton on GPU, Mosaic on TPU, interpret mode on CPU (slow; for tests
  and development), chosen for the platform the call is compiled for. Its block sizes are
  ``query_chunk_size`` and ``key_chunk_size`` rounded up to what the backend tiles (default
  64 x 64 on GPU, 128 x 128 on TPU). It takes no `bias` yet (use a boolean `mask`, or
  ``"chunked"``), needs concrete sizes, and has first-order reverse mode only.
  On GPU and TPU it is compiled in the tests but not yet measured on the hardware; None
  never picks it.

  Args:
    query: ``(B, T, N, H)`` or ``(T, N, H)``, a floating array.
    key: ``(B, S, K, H)`` or ``(S, K, H)``, the dtype of `query`; ``N % K == 0`` (grouped-
      query attention when ``K < N``).
    value: the shape and dtype of `key`.
    bias: added to the logits; broadcastable to ``(B, N, T, S)`` (``(N, T, S)`` unbatched).
    mask: boolean, True where a query may attend a key; broadcastable like `bias`.
    dropout_key: a PRNG key, needed unless `deterministic` is True or the rate a concrete 0.
    dropout_rate: the probability of dropping each weight, in [0, 1]; may be traced. Under `jit` a
      dropout_rate outside [0, 1] or NaN cannot raise: while training it makes the whole output NaN,
      and with ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call eagerly, where its
      check raises a ValueError naming it.
    deterministic: if True, no dropout; may be a traced boolean.
    broadcast_dims: axes of the ``(B, N, T, S)`` weights (of ``(N, T, S)`` unbatched) that
      share one mask: ``(0, 1)`` for one mask over batch and heads (Flax's
      ``broadcast_dropout=True``).
    scale: the logits' scale, ``1 / sqrt(H)`` by default.
    is_causal: query ``t`` attends keys ``s <= t`` only.
    query_seq_lengths: an int array of shape ``(B,)``; query rows at or beyond it are padding,
      and the output is 0 there.
    key_value_seq_lengths: an int array of shape ``(B,)``; keys at or beyond it are masked.
    implementation: ``"xla"``, ``"chunked"``, ``"pallas"`` or None (see above).
    query_chunk_size: the block size along the queries of ``"chunked"`` (None: 512) and
      ``"pallas"`` (None: the backend's).
    key_chunk_size: the block size along the keys, likewise.
    shard_spec: only inside `jax.shard_map`, where the arguments are blocks of global
      arrays: `query`'s entry of ``in_specs``, so that each block draws its part of the
      global mask. It may split the batch and head axes (key and value split alike); the
      sequence and head-dimension axes must be whole.

  Returns:
    An array with the shape and dtype of `query`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> q = k = v = jax.random.normal(jax.random.key(0), (2, 16, 4, 8))
    >>> out = jaxdrop.dot_product_attention(q, k, v, dropout_key=jax.random.key(1),
    ...                                     dropout_rate=0.1, is_causal=True)
    >>> out.shape
    (2, 16, 4, 8)
    >>> same = jaxdrop.dot_product_attention(q, k, v, dropout_key=jax.random.key(1),
    ...     dropout_rate=0.1, is_causal=True, implementation="chunked", query_chunk_size=8)
    >>> bool(jnp.allclose(out, same, atol=1e-5))
    True

  References:
    Srivastava et al., "Dropout: a simple way to prevent neural networks from overfitting",
    JMLR (2014); Dao, "FlashAttention-2", ICLR (2024).
  """
  q, k, v, batched = _arrays(query, key, value)
  b, t, n, h = q.shape
  s = k.shape[1]
  weights_shape = (b, n, t, s)
  bias, mask = _bias_and_mask(bias, mask, weights_shape)
  q_lengths = _check_lengths(query_seq_lengths, "query_seq_lengths", b)
  k_lengths = _check_lengths(key_value_seq_lengths, "key_value_seq_lengths", b)
  rate_value = check.probability(dropout_rate, "dropout_rate")
  deterministic = check.flag(deterministic, "deterministic")
  is_causal = check.static_bool(is_causal, "is_causal")
  dims = check.axes(broadcast_dims, 4 if batched else 3, "broadcast_dims")
  dims = dims if batched else tuple(d + 1 for d in dims)
  scale = _scale(scale, h)
  check.choice(implementation, (None, *IMPLEMENTATIONS), "implementation")
  q_chunk = _chunk_size(query_chunk_size, "query_chunk_size")
  k_chunk = _chunk_size(key_chunk_size, "key_chunk_size")
  weights_spec = _weights_spec(shard_spec, batched)
  dropout_key = checked_key(dropout_key)
  dropout_on = not (deterministic is True or rate_value == 0.0)
  if dropout_on:
    dropout_key = require_key("dot_product_attention", dropout_key, dropout_rate, deterministic)
  if implementation is None:
    implementation = _default_implementation(weights_shape)
  if implementation == "pallas":
    _pallas_arguments(q, k, bias)
  if 0 in (b, t, s, n, h):
    implementation = "xla"  # nothing to chunk: the materialised version handles empty axes
  if implementation == "xla":
    # Unbatched weights (N, T, S) number their mask rows as a batch of one does.
    out = _xla_attention(
      q,
      k,
      v,
      bias,
      mask,
      q_lengths,
      k_lengths,
      dropout_key,
      dropout_rate,
      deterministic,
      scale=scale,
      is_causal=is_causal,
      broadcast_dims=dims,
      dropout_on=dropout_on,
      weights_spec=weights_spec,
    )
  else:
    words, drop, mask_global = _blocked_dropout(
      dropout_key if dropout_on else None,
      dropout_rate,
      deterministic,
      weights_spec,
      weights_shape,
      dims,
    )
    options: dict[str, Any] = {
      "scale": scale,
      "is_causal": is_causal,
      "mask_shape": tuple(1 if axis in dims else size for axis, size in enumerate(weights_shape)),
      "mask_global": mask_global,
      "dropout_on": dropout_on,
    }
    out = _blocked(
      implementation, q, k, v, bias, mask, q_lengths, k_lengths, words, drop,
      (q_chunk, k_chunk), options,
    )  # fmt: skip
  return out if batched else out[0]
