"""The ``"chunked"`` implementation: blocks of queries meet blocks of keys in `lax` loops with an
online softmax (FlashAttention; Milakov and Gimelshein 2018, Rabe and Staats 2021, Dao 2023),
under a `jax.custom_vjp` that keeps only the output and each row's softmax statistics. Its
backward pass recomputes every block's logits and draws every block's dropout mask again from
the key: jaxdrop's mask is a function of the key and the element's global index, so the block
``[b, n, t0:t1, s0:s1]`` of the mask is the same whether drawn alone or as part of the whole
``(B, N, T, S)`` array.

Layout inside: queries grouped as ``(B, T, K, G, H)`` (``N = K * G`` query heads share ``K``
key/value heads, head ``n = k * G + g``, as in `jax.nn.dot_product_attention`), logits as
``(B, K, G, T, S)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._mask import MaskLayout, MaskSource, keep_mask
from ._geometry import _LARGE_NEGATIVE, _allowed, _grouped, _zero_padded_rows

# The dropout parameters of the chunked path: (t, any_kept, scale, (batch_offset, head_offset)).
_Drop = tuple[jax.Array, jax.Array | np.bool_, jax.Array, tuple[jax.Array, ...]]
# The backward pass's accumulators: d(query), d(key), d(value), d(bias) (None without bias).
_Grads = tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]


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
