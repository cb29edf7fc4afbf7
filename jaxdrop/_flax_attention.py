"""Flax's ``attention_fn`` convention mapped onto `dot_product_attention`.

Flax's attention modules call ``attention_fn(query, key, value, mask=..., dropout_rng=...,
dropout_rate=..., broadcast_dropout=..., deterministic=..., precision=...)`` on arrays of shape
``[batch..., length, heads, depth]`` with any number of batch axes (none included). This module
turns those arguments into one `dot_product_attention` call: the batch axes merge into one,
``broadcast_dropout=True`` (one mask shared by every example and head) becomes
``broadcast_dims`` over the batch and head axes, and a `precision` applies to every matmul of
the call. It imports no Flax: `jaxdrop.nnx` and `jaxdrop.linen` add the framework's dtype
promotion and weight sowing around it.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _validate as check
from ._attention import dot_product_attention

# `jax.default_matmul_precision` names of the `lax.Precision` values.
_PRECISION_NAMES = {
  jax.lax.Precision.DEFAULT: "default",
  jax.lax.Precision.HIGH: "high",
  jax.lax.Precision.HIGHEST: "highest",
}


def no_custom_einsums(**einsums: object) -> None:
  """Flax's hooks that replace the attention einsums cannot apply: the weights never exist."""
  for name, value in einsums.items():
    if value is not None:
      raise ValueError(
        f"{name} is not supported by jaxdrop's attention_fn, got {value!r}: it "
        "never forms the attention weights as an einsum operand (chunked "
        "attention works block by block); use Flax's own attention_fn for "
        "custom einsums"
      )


def _precision_scope(precision: Any) -> contextlib.AbstractContextManager[Any]:
  """The matmul precision `precision` asks for, as a context over the whole call."""
  if precision is None:
    return contextlib.nullcontext()
  if isinstance(precision, (tuple, list)) and len(set(precision)) == 1:
    precision = precision[0]
  if isinstance(precision, str):
    return jax.default_matmul_precision(precision)
  if precision in _PRECISION_NAMES:
    return jax.default_matmul_precision(_PRECISION_NAMES[precision])
  raise ValueError(
    f"precision must be None, a jax.lax.Precision, its name, or a pair of one "
    f"of them twice, got {precision!r}"
  )


def _merge_batch(x: ArrayLike, batch: tuple[int, ...]) -> jax.Array:
  """An array ``[batch..., a, b, c]`` (or broadcastable to it) as ``[prod(batch), a, b, c]``.

  One shared by every example (batch axes of size 1) stays one, ``[1, a, b, c]``: a causal
  ``(T, S)`` mask is not copied per example.
  """
  x = jnp.asarray(x)
  x = x.reshape((1,) * (len(batch) + 3 - x.ndim) + x.shape)
  lead, rest = x.shape[: len(batch)], x.shape[len(batch) :]
  if all(size == 1 for size in lead):
    return x.reshape((1,) + rest)
  return jnp.broadcast_to(x, batch + rest).reshape((math.prod(batch),) + rest)


def _no_dropout(rate: ArrayLike, deterministic: bool | ArrayLike) -> bool:
  """Whether a call certainly drops nothing (concrete values only; traced ones may drop)."""
  if not check.is_traced(deterministic) and check.flag(deterministic, "deterministic") is True:
    return True
  return check.probability(rate, "dropout_rate") == 0.0


def flax_attention(
  query: jax.Array,
  key: jax.Array,
  value: jax.Array,
  bias: ArrayLike | None,
  mask: ArrayLike | None,
  *,
  broadcast_dropout: bool,
  dropout_rng: jax.Array | None,
  dropout_rate: ArrayLike,
  deterministic: bool | ArrayLike,
  precision: jax.lax.PrecisionLike,
  is_causal: bool,
  implementation: Literal["xla", "chunked", "pallas"] | None,
  query_chunk_size: int | None,
  key_chunk_size: int | None,
) -> jax.Array:
  """`dot_product_attention` called with Flax's arguments; see the module docstring."""
  if query.ndim < 3:
    raise ValueError(f"query must be [batch..., length, heads, depth], got shape {query.shape}")
  if not query.ndim == key.ndim == value.ndim:
    raise ValueError(
      f"query, key and value must have the same rank, got shapes {query.shape}, "
      f"{key.shape} and {value.shape}"
    )
  batch = query.shape[:-3]
  if not batch == key.shape[:-3] == value.shape[:-3]:
    raise ValueError(
      f"query, key and value batch dims must match, got shapes {query.shape}, "
      f"{key.shape} and {value.shape}"
    )
  if dropout_rng is None and not _no_dropout(dropout_rate, deterministic):
    raise ValueError(
      f"dropout_rng must be a PRNG key when dropout_rate={dropout_rate!r} and "
      f"deterministic={deterministic!r}, got None"
    )
  if mask is not None:
    mask = jnp.asarray(mask).astype(jnp.bool_)  # Flax masks where the value is zero
  if len(batch) > 1:
    query, key, value = (_merge_batch(a, batch) for a in (query, key, value))
    bias, mask = (None if a is None else _merge_batch(a, batch) for a in (bias, mask))
  # Flax's broadcast mask is [1, ..., 1, T, S]: one draw for every example and head.
  heads_and_batch = (0, 1) if batch else (0,)
  with _precision_scope(precision):
    out = dot_product_attention(
      query,
      key,
      value,
      bias,
      mask,
      dropout_key=dropout_rng,
      dropout_rate=dropout_rate,
      deterministic=deterministic,
      broadcast_dims=heads_and_batch if broadcast_dropout else (),
      is_causal=is_causal,
      implementation=implementation,
      query_chunk_size=query_chunk_size,
      key_chunk_size=key_chunk_size,
    )
  return out.reshape(batch + out.shape[-3:])
