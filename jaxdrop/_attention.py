"""Dot-product attention with dropout on the attention weights.

Two implementations with the same mask. ``"xla"`` builds the ``(B, N, T, S)`` weights and
calls `jaxdrop.dropout` on them: the reference. ``"chunked"`` never builds a ``(T, S)``
array: queries and keys are taken in blocks, the softmax is computed online
(FlashAttention; Milakov and Gimelshein 2018, Rabe and Staats 2021, Dao 2023), and a
`jax.custom_vjp` keeps only the output and each row's log-sum-exp. Its backward pass
recomputes every block's logits and draws every block's dropout mask again from the key:
jaxdrop's mask is a function of the key and the element's global index, so the block
``[b, n, t0:t1, s0:s1]`` of the mask is the same whether drawn alone or as part of the
whole ``(B, N, T, S)`` array.

Layout inside: queries grouped as ``(B, T, K, G, H)`` (``N = K * G`` query heads share
``K`` key/value heads, head ``n = k * G + g``, as in `jax.nn.dot_product_attention`),
logits as ``(B, K, G, T, S)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._core import _JAX_JVP_ERROR
from ._dropout import (
  bernoulli_scalars,
  block_position,
  checked_key,
  compute_dtype,
  dropout,
  require_key,
)
from ._keys import mask_words
from ._mask import MaskLayout, MaskSource, drop_threshold, keep_mask

IMPLEMENTATIONS = ("xla", "chunked")

# Above this many attention weights per call (B * N * T * S) the default implementation is
# "chunked": 2**24 float32 weights are 64 MiB, plus as much again for their gradient.
_CHUNKED_ABOVE = 2**24


# The value masked logits take, as in `jax.nn.dot_product_attention` (so fully masked rows
# average the values exactly as it does): -0.7 times float32's largest value, its logits
# being float32 for half-precision inputs too.
_LARGE_NEGATIVE = np.float32(-0.7 * float(np.finfo(np.float32).max))

# The dropout parameters of the chunked path: (t, any_kept, scale, (batch_offset, head_offset)).
_Drop = tuple[jax.Array, jax.Array | np.bool_, jax.Array, tuple[jax.Array, ...]]
# The backward pass's accumulators: d(query), d(key), d(value), d(bias) (None without bias).
_Grads = tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]


def _allowed(
  rows: jax.Array,
  columns: jax.Array,
  mask: jax.Array | None,
  is_causal: bool,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
) -> jax.Array:
  """Which logits take part, ``(B, K, G, T, S)``-broadcastable, from query positions `rows`
  ``(1, 1, 1, T, 1)`` and key positions `columns` ``(1, 1, 1, 1, S)``: the rule of
  `jax.nn.dot_product_attention`, shared by both implementations (the chunked one passes a
  block's positions and the block of `mask`)."""
  allowed = jnp.ones((1, 1, 1) + (rows.shape[3], columns.shape[4]), bool)
  if mask is not None:
    allowed = allowed & mask
  if is_causal:
    allowed = allowed & (columns <= rows)
  if k_lengths is not None:
    allowed = allowed & (columns < k_lengths[:, None, None, None, None])
  if q_lengths is not None:
    allowed = allowed & (rows < q_lengths[:, None, None, None, None])
  return allowed


def _zero_padded_rows(out: jax.Array, q_lengths: jax.Array | None) -> jax.Array:
  """The output's query rows at or beyond `query_seq_lengths` set to 0, as jax.nn does."""
  if q_lengths is None:
    return out
  rows = jnp.arange(out.shape[1])[None, :] < q_lengths[:, None]
  return out * rows[:, :, None, None].astype(out.dtype)


def _add_at(total: jax.Array, piece: jax.Array, index: tuple[int | jax.Array, ...]) -> jax.Array:
  """`total` with `piece` added at `index` (its start along every axis)."""
  return jax.lax.dynamic_update_slice(
    total, jax.lax.dynamic_slice(total, index, piece.shape) + piece, index
  )


@dataclasses.dataclass(frozen=True)
class _Config:
  """Everything static about one chunked call."""

  scale: float
  is_causal: bool
  skip_causal: bool  # skip key chunks above the diagonal (see `_Blocks.key_chunks`)
  q_chunk: int
  k_chunk: int
  length_q: int  # T and S before padding to whole chunks
  length_k: int
  dropout: bool  # False: no mask is drawn at all (rate 0 or deterministic=True)
  mask_shape: tuple[int, ...]  # this call's part of the mask: (B, N, T, S), 1 where shared
  mask_global: tuple[int, ...]  # the whole mask's (differs inside shard_map)


@overload
def _grouped(a: jax.Array, heads_k: int) -> jax.Array: ...
@overload
def _grouped(a: jax.Array | None, heads_k: int) -> jax.Array | None: ...
def _grouped(a: jax.Array | None, heads_k: int) -> jax.Array | None:
  """A ``(B, N, T, S)``-broadcastable array as ``(B, K, G, T, S)``-broadcastable."""
  if a is None:
    return None
  b, n, t, s = a.shape
  if n == 1:
    return a[:, :, None]
  return a.reshape(b, heads_k, n // heads_k, t, s)


@overload
def _chunk(a: jax.Array, axis: int, index: int | jax.Array, size: int) -> jax.Array: ...
@overload
def _chunk(
  a: jax.Array | None, axis: int, index: int | jax.Array, size: int
) -> jax.Array | None: ...
def _chunk(a: jax.Array | None, axis: int, index: int | jax.Array, size: int) -> jax.Array | None:
  """Chunk `index` of `size` along `axis`, or the whole axis where it is broadcast (size 1)."""
  if a is None or a.shape[axis] == 1:
    return a
  return jax.lax.dynamic_slice_in_dim(a, index * size, size, axis)


def varying_axes(value: Any) -> frozenset:
  """The manual mesh axes `value` varies over inside `jax.shard_map` (empty outside).

  JAX keeps them on the abstract value: ``manual_axis_type.varying`` in jax 0.10, ``vma``
  before; `tests/test_jax_pins.py` pins this."""
  aval = jax.typeof(value)
  manual = getattr(aval, "manual_axis_type", None)
  return frozenset(manual.varying if manual is not None else getattr(aval, "vma", ()))


class _Blocks:
  """The pieces of block ``(i, j)``: logits, which of them take part, the dropout multiplier."""

  def __init__(
    self,
    cfg: _Config,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    q_lengths: jax.Array | None,
    k_lengths: jax.Array | None,
    words: jax.Array | None,
    drop: _Drop | None,
  ) -> None:
    self.cfg, self.q, self.k, self.v = cfg, q, k, v
    self.bias, self.mask = bias, mask
    self.q_lengths, self.k_lengths, self.words, self.drop = q_lengths, k_lengths, words, drop
    # Inside shard_map, the mesh axes the inputs vary over: a loop's carry must start with
    # the type its body gives it, so fresh accumulators are cast to vary over them too.
    leaves = jax.tree.leaves((q, k, v, bias, mask, q_lengths, k_lengths, words, drop))
    self.varying = tuple(sorted(set().union(*map(varying_axes, leaves))))

  def fresh(self, value: jax.Array) -> jax.Array:
    """A new loop accumulator, typed like the values the loop body combines into it."""
    return jax.lax.pcast(value, self.varying, to="varying") if self.varying else value

  def rows(self, i: jax.Array) -> jax.Array:
    """Query positions of chunk i, shaped ``(1, 1, 1, Tq, 1)`` like the logits' axes."""
    return (i * self.cfg.q_chunk + jnp.arange(self.cfg.q_chunk)).reshape(1, 1, 1, -1, 1)

  def columns(self, j: jax.Array) -> jax.Array:
    return (j * self.cfg.k_chunk + jnp.arange(self.cfg.k_chunk)).reshape(1, 1, 1, 1, -1)

  def logits(self, i: jax.Array, j: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(s, allowed, exists)``: masked logits (float32), the mask of logits that take part
    (their gradient flows), and the mask of real (unpadded) keys."""
    cfg = self.cfg
    q = _chunk(self.q, 1, i, cfg.q_chunk)
    k = _chunk(self.k, 1, j, cfg.k_chunk)
    s = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    s = s * np.float32(cfg.scale)
    if self.bias is not None:
      s = s + _chunk(_chunk(self.bias, 3, i, cfg.q_chunk), 4, j, cfg.k_chunk).astype(jnp.float32)
    t, c = self.rows(i), self.columns(j)
    exists = c < cfg.length_k
    mask = _chunk(_chunk(self.mask, 3, i, cfg.q_chunk), 4, j, cfg.k_chunk)
    allowed = exists & _allowed(t, c, mask, cfg.is_causal, self.q_lengths, self.k_lengths)
    s = jnp.where(allowed, s, _LARGE_NEGATIVE)
    # Padded keys (beyond S) take no part, not even in the running maximum: a masked logit
    # is above a bias as low as finfo.min.
    s = jnp.where(exists, s, np.finfo(np.float32).min)
    return s, allowed, exists

  def multiplier(self, i: jax.Array, j: jax.Array) -> jax.Array:
    """The dropout factor of block (i, j): ``1/keep`` where kept, 0 where dropped (float32),
    from the same global mask `jaxdrop.dropout` draws on the ``(B, N, T, S)`` weights."""
    cfg = self.cfg
    assert self.drop is not None and self.words is not None  # cfg.dropout: both were drawn
    t, any_kept, scale, (batch_offset, head_offset) = self.drop
    mb, mn, mt, ms = cfg.mask_shape
    # `!= 1` rather than `> 1`: decidable for a symbolic size too (a size that is 1 at run
    # time draws the same either way).
    shape = (mb, mn, cfg.q_chunk if mt != 1 else 1, cfg.k_chunk if ms != 1 else 1)
    offsets = (
      batch_offset,
      head_offset,
      jnp.asarray(i * cfg.q_chunk if mt != 1 else 0, jnp.uint32),
      jnp.asarray(j * cfg.k_chunk if ms != 1 else 0, jnp.uint32),
    )
    keep = keep_mask(
      MaskSource(self.words, offsets), MaskLayout(shape, global_shape=cfg.mask_global), t, any_kept
    )
    factor = jnp.where(keep, scale.astype(jnp.float32), np.float32(0))
    heads_k = self.k.shape[2]
    return factor[:, :, None] if mn == 1 else factor.reshape(mb, heads_k, mn // heads_k, *shape[2:])

  def key_chunks(self, i: jax.Array) -> int | jax.Array:
    """How many key chunks query chunk i visits: all, or with `skip_causal` those that
    reach its last row.

    Skipping is exact only where no row is fully masked: `jax.nn.dot_product_attention`
    averages such a row over every key, skipped ones included. Causality alone never masks
    a whole row (and rows beyond `query_seq_lengths` are zeroed anyway), but a boolean mask
    or a key length of 0 can; with either, every chunk is visited. (Deciding per chunk from
    the data would make the loop's trip count depend on a reduction over the batch: an
    all-reduce on a sharded batch.)
    """
    cfg = self.cfg
    count = (cfg.length_k + cfg.k_chunk - 1) // cfg.k_chunk
    if not cfg.skip_causal:
      return count
    return jnp.minimum(((i + 1) * cfg.q_chunk + cfg.k_chunk - 1) // cfg.k_chunk, count)


def _forward(cfg: _Config, blocks: _Blocks) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Output ``(B, Tp, K, G, H)`` in float32 and, per row ``(B, K, G, Tp)``, the softmax's
  maximum `m` and ``1 / l`` for its normaliser `l` (kept apart rather than as the log-sum-exp
  ``m + log l``: for a fully masked row m is about -2.4e38, which absorbs ``log l``)."""
  b, padded, heads_k, groups, h = blocks.q.shape

  def query_chunk(i: jax.Array, results: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    def step(
      j: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
      m, l, acc = carry
      s, _, exists = blocks.logits(i, j)
      m_new = jnp.maximum(m, jnp.max(s, axis=-1))
      correction = jnp.exp(m - m_new)
      p = jnp.where(exists, jnp.exp(s - m_new[..., None]), np.float32(0))
      l = l * correction + jnp.sum(p, axis=-1)
      if cfg.dropout:
        p = p * blocks.multiplier(i, j)
      v = _chunk(blocks.v, 1, j, cfg.k_chunk)
      pv = jnp.einsum("bkgts,bskh->bkgth", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
      return m_new, l, acc * correction[..., None] + pv

    # The running maximum starts below every finite logit (not at the masking value: a bias
    # such as finfo.min puts logits below it), so the largest term of each row is exp(0).
    init = tuple(
      map(
        blocks.fresh,
        (
          jnp.full((b, heads_k, groups, cfg.q_chunk), jnp.finfo(jnp.float32).min, jnp.float32),
          jnp.zeros((b, heads_k, groups, cfg.q_chunk), jnp.float32),
          jnp.zeros((b, heads_k, groups, cfg.q_chunk, h), jnp.float32),
        ),
      )
    )
    m, l, acc = jax.lax.fori_loop(0, blocks.key_chunks(i), step, init)
    inverse = 1 / l  # l >= 1: the row's largest term is exp(0)
    out = jnp.moveaxis(acc * inverse[..., None], 3, 1)  # (B, Tq, K, G, H)
    start = i * cfg.q_chunk
    return tuple(
      jax.lax.dynamic_update_slice_in_dim(total, piece, start, axis)
      for total, piece, axis in zip(results, (out, m, inverse), (1, 3, 3))
    )

  # A loop writing each query chunk's rows in place (rather than `lax.map` stacking them): its
  # trip count may be symbolic under `jax.export`, which `lax.map`'s scan does not take.
  rows = jnp.zeros((b, heads_k, groups, padded), jnp.float32)
  results = tuple(map(blocks.fresh, (jnp.zeros(blocks.q.shape, jnp.float32), rows, rows)))
  out, m, inverse = jax.lax.fori_loop(0, padded // cfg.q_chunk, query_chunk, results)
  return out, m, inverse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(
  cfg: _Config,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array | None,
  mask: jax.Array | None,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
  words: jax.Array | None,
  drop: _Drop | None,
) -> jax.Array:
  out, _, _ = _forward(cfg, _Blocks(cfg, q, k, v, bias, mask, q_lengths, k_lengths, words, drop))
  return out.astype(q.dtype)


def _chunked_fwd(
  cfg: _Config,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array | None,
  mask: jax.Array | None,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
  words: jax.Array | None,
  drop: _Drop | None,
) -> tuple[jax.Array, tuple[Any, ...]]:
  out, m, inverse = _forward(
    cfg, _Blocks(cfg, q, k, v, bias, mask, q_lengths, k_lengths, words, drop)
  )
  out = out.astype(q.dtype)
  return out, (q, k, v, bias, mask, q_lengths, k_lengths, words, drop, out, m, inverse)


def _chunked_bwd(
  cfg: _Config, residuals: tuple[Any, ...], g: jax.Array
) -> tuple[jax.Array | None, ...]:
  q, k, v, bias, mask, q_lengths, k_lengths, words, drop, out, m, inverse = residuals
  blocks = _Blocks(cfg, q, k, v, bias, mask, q_lengths, k_lengths, words, drop)
  count_q = q.shape[1] // cfg.q_chunk
  scale = np.float32(cfg.scale)
  # D = rowsum(dO * O) (FlashAttention-2): the softmax's correction term, dropout included.
  delta = jnp.einsum("btkgh,btkgh->bkgt", g.astype(jnp.float32), out.astype(jnp.float32))

  def query_chunk(i: jax.Array, carry: _Grads) -> _Grads:
    dq, dk, dv, dbias = carry
    q_i = _chunk(q, 1, i, cfg.q_chunk)
    g_i = _chunk(g, 1, i, cfg.q_chunk)
    m_i = _chunk(m, 3, i, cfg.q_chunk)[..., None]
    inverse_i = _chunk(inverse, 3, i, cfg.q_chunk)[..., None]
    delta_i = _chunk(delta, 3, i, cfg.q_chunk)[..., None]

    def step(j: jax.Array, inner: _Grads) -> _Grads:
      dq_i, dk, dv, dbias = inner
      s, allowed, exists = blocks.logits(i, j)
      p = jnp.where(exists, jnp.exp(s - m_i) * inverse_i, np.float32(0))
      k_j, v_j = _chunk(k, 1, j, cfg.k_chunk), _chunk(v, 1, j, cfg.k_chunk)
      dp = jnp.einsum("btkgh,bskh->bkgts", g_i, v_j, preferred_element_type=jnp.float32)
      if cfg.dropout:
        factor = blocks.multiplier(i, j)
        p_dropped, dp = p * factor, dp * factor
      else:
        p_dropped = p
      dv_j = jnp.einsum(
        "bkgts,btkgh->bskh", p_dropped.astype(g.dtype), g_i, preferred_element_type=jnp.float32
      )
      ds = jnp.where(allowed, p * (dp - delta_i), np.float32(0))
      dq_i = dq_i + scale * jnp.einsum(
        "bkgts,bskh->btkgh", ds.astype(k.dtype), k_j, preferred_element_type=jnp.float32
      )
      dk_j = scale * jnp.einsum(
        "bkgts,btkgh->bskh", ds.astype(q.dtype), q_i, preferred_element_type=jnp.float32
      )
      start = j * cfg.k_chunk
      dk = _add_at(dk, dk_j, (0, start, 0, 0))
      dv = _add_at(dv, dv_j, (0, start, 0, 0))
      if dbias is not None:
        axes = tuple(a for a in range(5) if dbias.shape[a] == 1 and ds.shape[a] != 1)
        dbias = _add_at(
          dbias,
          jnp.sum(ds, axis=axes, keepdims=True),
          (
            0,
            0,
            0,
            i * cfg.q_chunk if dbias.shape[3] != 1 else 0,
            start if dbias.shape[4] != 1 else 0,
          ),
        )
      return dq_i, dk, dv, dbias

    inner = (blocks.fresh(jnp.zeros(q_i.shape, jnp.float32)), dk, dv, dbias)
    dq_i, dk, dv, dbias = jax.lax.fori_loop(0, blocks.key_chunks(i), step, inner)
    dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_i, i * cfg.q_chunk, 1)
    return dq, dk, dv, dbias

  zeros = lambda a: None if a is None else blocks.fresh(jnp.zeros(a.shape, jnp.float32))
  dq, dk, dv, dbias = jax.lax.fori_loop(
    0, count_q, query_chunk, (zeros(q), zeros(k), zeros(v), zeros(bias))
  )
  dbias = None if bias is None else dbias.astype(bias.dtype)
  return (
    dq.astype(q.dtype),
    dk.astype(k.dtype),
    dv.astype(v.dtype),
    dbias,
    None,
    None,
    None,
    None,
    None,
  )


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


@overload
def _pad(a: jax.Array, axis: int, multiple: int, value: ArrayLike = 0) -> jax.Array: ...
@overload
def _pad(
  a: jax.Array | None, axis: int, multiple: int, value: ArrayLike = 0
) -> jax.Array | None: ...
def _pad(a: jax.Array | None, axis: int, multiple: int, value: ArrayLike = 0) -> jax.Array | None:
  """Pads `axis` of `a` up to a multiple of `multiple` (not where it is broadcast)."""
  if a is None or a.shape[axis] == 1 or a.shape[axis] % multiple == 0:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, -a.shape[axis] % multiple)
  return jnp.pad(a, widths, constant_values=value)


def _chunked_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array | None,
  mask: jax.Array | None,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
  words: jax.Array | None,
  drop: _Drop | None,
  *,
  scale: float,
  is_causal: bool,
  mask_shape: tuple[int, ...],
  mask_global: tuple[int, ...],
  dropout_on: bool,
  q_chunk: int,
  k_chunk: int,
) -> jax.Array:
  b, t, n, h = q.shape
  _, s, heads_k, _ = k.shape
  # Under jax.export a symbolic T or S makes the chunk symbolic too (min(t, 512)): the
  # chunk, the padding and the number of chunks are expressions fixed when the artifact is
  # called, the same numbers a concrete call of that size uses.
  q_chunk, k_chunk = jax.core.min_dim(q_chunk, t), jax.core.min_dim(k_chunk, s)
  skip_causal = is_causal and mask is None and k_lengths is None
  cfg = _Config(
    scale=scale,
    is_causal=is_causal,
    skip_causal=skip_causal,
    q_chunk=q_chunk,
    k_chunk=k_chunk,
    length_q=t,
    length_k=s,
    dropout=dropout_on,
    mask_shape=mask_shape,
    mask_global=mask_global,
  )
  q = _pad(q.reshape(b, t, heads_k, n // heads_k, h), 1, q_chunk)
  k, v = _pad(k, 1, k_chunk), _pad(v, 1, k_chunk)
  bias = _pad(_pad(_grouped(bias, heads_k), 3, q_chunk), 4, k_chunk)
  # Padded query rows may attend everything (they are cut off); padded keys are excluded
  # separately (`exists`), so the mask's padding value does not matter for them.
  mask = _pad(_pad(_grouped(mask, heads_k), 3, q_chunk, True), 4, k_chunk, True)
  out = _chunked(cfg, q, k, v, bias, mask, q_lengths, k_lengths, words, drop)
  return _zero_padded_rows(out[:, :t].reshape(b, t, n, h), q_lengths)


def _partitioned_inside(fn: Callable[..., jax.Array], like: jax.Array) -> Callable[..., jax.Array]:
  """`fn`, run with the explicit mesh axes of `like`'s mesh made auto (`jax.sharding.auto_axes`)
  and its result given `like`'s sharding.

  The chunked loops create accumulators that their bodies combine with blocks of sharded
  inputs; on explicit axes each would need its type spelled out, or `lax.fori_loop` refuses
  a carry that comes back sharded. Inside auto axes XLA's partitioner places them from the
  inputs' shardings, as on an auto mesh: each device keeps its batch and head blocks and
  draws only their part of the mask, with no collective where the inputs agree
  (`tests/multidevice/test_attention_sharding.py`). Without a mesh or explicit axes `fn` runs
  as it is.
  """
  sharding = jax.typeof(like).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or not mesh.explicit_axes:
    return fn
  return jax.sharding.auto_axes(fn, axes=mesh.explicit_axes, out_sharding=sharding)


def _xla_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  bias: jax.Array | None,
  mask: jax.Array | None,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
  dropout_key: jax.Array | None,
  rate: ArrayLike,
  deterministic: bool | jax.Array,
  *,
  scale: float,
  is_causal: bool,
  broadcast_dims: tuple[int, ...],
  dropout_on: bool,
  weights_spec: jax.sharding.PartitionSpec | None,
) -> jax.Array:
  """The materialised reference: `jax.nn.dot_product_attention`'s computation, with
  `jaxdrop.dropout` applied to the ``(B, N, T, S)`` weights when `dropout_on`.

  Written out rather than calling jax.nn without dropout: jax.nn's float16 logits ask CPU's
  dot_general for a float32 result it refuses under `jit`, and its gradient promotes
  implicitly, which a caller's strict promotion refuses."""
  b, t, n, h = q.shape
  _, s, heads_k, _ = k.shape
  groups = n // heads_k
  logits = jnp.einsum(
    "btkgh,bskh->bkgts",
    q.reshape(b, t, heads_k, groups, h),
    k,
    preferred_element_type=compute_dtype(q.dtype),
  )
  logits = logits * jnp.asarray(scale, logits.dtype)
  if bias is not None:
    logits = logits + _grouped(bias, heads_k).astype(logits.dtype)
  rows, columns = jnp.arange(t).reshape(1, 1, 1, t, 1), jnp.arange(s).reshape(1, 1, 1, 1, s)
  allowed = _allowed(rows, columns, _grouped(mask, heads_k), is_causal, q_lengths, k_lengths)
  logits = jnp.where(allowed, logits, _LARGE_NEGATIVE.astype(logits.dtype))
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(k.dtype)
  if dropout_on:
    weights = dropout(
      dropout_key,
      weights.reshape(b, n, t, s),
      rate,
      deterministic=deterministic,
      broadcast_dims=broadcast_dims,
      shard_spec=weights_spec,
      autodiff="jvp",
    ).reshape(b, heads_k, groups, t, s)  # forward mode too, at the cost of "vjp" (measured)
  out = jnp.einsum("bkgts,bskh->btkgh", weights, v)
  return _zero_padded_rows(out.reshape(b, t, n, h), q_lengths)


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


def _chunk_size(value: object, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


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
  implementation: Literal["xla", "chunked"] | None = None,
  query_chunk_size: int = 512,
  key_chunk_size: int = 512,
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
  (``(N, T, S)`` for unbatched input), in both implementations. The derivative is that of
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
    implementation: ``"xla"``, ``"chunked"`` or None (see above).
    query_chunk_size: the chunked implementation's block size along the queries.
    key_chunk_size: the chunked implementation's block size along the keys.
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
  b, t, n, h = q.shape
  if k.shape != v.shape or k.shape[0] != b or k.shape[3] != h:
    raise ValueError(
      f"key and value must have shape (B, S, K, H) = ({b}, S, K, {h}) to match "
      f"query {q.shape}, got key {k.shape} and value {v.shape}"
    )
  s, heads_k = k.shape[1], k.shape[2]
  if n % heads_k:
    raise ValueError(
      f"the number of query heads ({n}) must be a multiple of the number of "
      f"key/value heads ({heads_k})"
    )
  weights_shape = (b, n, t, s)
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
  q_lengths = _check_lengths(query_seq_lengths, "query_seq_lengths", b)
  k_lengths = _check_lengths(key_value_seq_lengths, "key_value_seq_lengths", b)
  rate_value = check.probability(dropout_rate, "dropout_rate")
  deterministic = check.flag(deterministic, "deterministic")
  is_causal = check.static_bool(is_causal, "is_causal")
  dims = check.axes(broadcast_dims, 4 if batched else 3, "broadcast_dims")
  dims = dims if batched else tuple(d + 1 for d in dims)
  if scale is None and jax.export.is_symbolic_dim(h):
    raise ValueError(
      f"scale must be given when the head size is symbolic (jax.export), got head size {h}: "
      "1 / sqrt(H) is a constant of the compiled program"
    )
  if scale is None:
    scale = 1 / math.sqrt(h)
  elif (
    isinstance(scale, (bool, np.bool_))
    or check.is_traced(scale)
    or np.ndim(scale) != 0
    or not jnp.issubdtype(np.asarray(scale).dtype, np.number)
  ):
    raise TypeError(
      f"scale must be a concrete real number (it is part of the compiled program), got {scale!r}"
    )
  scale = float(scale)
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
  if t == 0 or s == 0:
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
    words, drop = None, None
    mask_shape = tuple(1 if axis in dims else size for axis, size in enumerate(weights_shape))
    mask_global = mask_shape
    if dropout_on:
      assert dropout_key is not None  # require_key has checked it above
      words = mask_words(dropout_key)
      params, _ = bernoulli_scalars(
        drop_threshold(dropout_rate), jnp.asarray(deterministic), "inverted"
      )
      offsets: tuple[jax.Array, ...] = (jnp.uint32(0), jnp.uint32(0))
      if weights_spec is not None:
        block_offsets, mask_global = block_position(weights_spec, weights_shape, dims)
        offsets = block_offsets[:2]  # the sequence axes are whole
      drop = (*params, offsets)
    try:
      out = _partitioned_inside(_chunked_attention, q)(
        q,
        k,
        v,
        bias,
        mask,
        q_lengths,
        k_lengths,
        words,
        drop,
        scale=scale,
        is_causal=is_causal,
        mask_shape=mask_shape,
        mask_global=tuple(mask_global),
        dropout_on=dropout_on,
        q_chunk=q_chunk,
        k_chunk=k_chunk,
      )
    except TypeError as err:
      if _JAX_JVP_ERROR not in str(err):
        raise
      raise TypeError(
        "jaxdrop.dot_product_attention with implementation='chunked' has a hand-written "
        "reverse-mode derivative (jax.grad, jax.vjp); for jax.jvp, jax.jacfwd, "
        "jax.linearize or second derivatives pass implementation='xla' (the same mask)"
      ) from err
  return out if batched else out[0]
