"""Attention with dropout as Pallas kernels (FlashAttention-2), the mask drawn in the kernel.

Three kernels under one `jax.custom_vjp`: the forward pass (grid: batch, query head, query
block; a loop over key blocks with an online softmax) keeps the output and, per query row, the
softmax's maximum and the inverse of its normaliser; the backward pass recomputes each block's
weights from them in a dq kernel (same grid) and a dk/dv kernel (grid: batch, key/value head,
key block; loops over the group's query heads and the query blocks). Each block's dropout
multiplier comes from `_mask.keep_mask` on the block's global indices: exactly the mask
`jaxdrop.dropout` draws on the ``(B, N, T, S)`` weights, in every kernel and whatever the block
sizes, so the values and gradients are those of the ``"chunked"`` and ``"xla"``
implementations with the same key.

Layout as in `jax.nn.dot_product_attention` and JAX's Pallas GPU attention: query
``(B, T, N, H)``, key and value ``(B, S, K, H)``, query head ``n`` reading key/value head
``n // G`` (``G = N / K``). The rule for which logits take part, the masking values and the
fully-masked-row behaviour are the chunked implementation's, in two dimensions.

This module holds the GPU-style kernels (whole key/value rows of one head in a block, a loop
inside), written with operations Pallas' Triton lowering takes; interpret mode runs them on
any backend.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from .._mask import MaskLayout, MaskSource, keep_mask
from ._geometry import _LARGE_NEGATIVE, _LOWEST, _zero_padded_rows


@dataclasses.dataclass(frozen=True)
class FlashConfig:
  """Everything static about one call of the kernels."""

  scale: float
  is_causal: bool
  skip_causal: bool  # skip key blocks above the diagonal (exact without a mask or key lengths)
  block_q: int
  block_k: int
  length_q: int  # T and S before padding to whole blocks
  length_k: int
  groups: int  # G = N / K query heads per key/value head
  has_q_lengths: bool
  has_k_lengths: bool
  # The boolean `mask` argument: which of the axes (B, N, T, S) it spans (None: no mask).
  attend_axes: tuple[bool, ...] | None
  dropout: bool  # False: no mask is drawn (rate 0 or deterministic=True)
  mask_shape: tuple[int, ...]  # this call's part of the (B, N, T, S) mask, 1 where shared
  mask_global: tuple[int, ...]  # the whole mask's (differs inside shard_map)
  backend: str  # "interpret", "triton" (GPU) or "mosaic" (TPU)


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
  """``a @ b`` contracting axis ``contract[0]`` of `a` with ``contract[1]`` of `b`, in float32."""
  dims = (((contract[0],), (contract[1],)), ((), ()))
  return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


def _bound(cfg: FlashConfig, value: np.int32, program: jax.Array) -> Any:
  """A loop bound of `value`; in interpret mode computed from the program id: Pallas' interpret
  mode inside `jax.shard_map` refuses a loop of fixed trip count (its scan's carries lose their
  varying mesh axes: a JAX bug whose message asks for ``check_vma=False``), and takes a loop
  of traced bounds. Compiled kernels keep the constant."""
  return value + np.int32(0) * program if cfg.backend == "interpret" else value


class _Block:
  """What every kernel computes for query block `i` of head `n` against key block `j`."""

  def __init__(self, cfg: FlashConfig, params: Any, b: jax.Array) -> None:
    ints_ref, floats_ref, q_lengths_ref, k_lengths_ref = params
    self.cfg, self.b = cfg, b
    self.ints_ref, self.floats_ref = ints_ref, floats_ref
    # Lengths: the whole (B,) array in SMEM on TPU, this batch element's (1,) block elsewhere.
    index = b if cfg.backend == "mosaic" else 0
    self.q_length = q_lengths_ref[index] if cfg.has_q_lengths else None
    self.k_length = k_lengths_ref[index] if cfg.has_k_lengths else None

  def logits(
    self, q: jax.Array, k: jax.Array, i: jax.Array, j: jax.Array, mask: jax.Array | None
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(s, allowed, exists)`` of the block: masked float32 logits ``(bq, bk)``, the logits
    that take part (their gradient flows) and the real (unpadded) keys; `mask` is the block
    of the boolean mask (broadcastable), if any."""
    cfg = self.cfg
    s = _dot(q, k, (1, 1)) * np.float32(cfg.scale)
    rows = i * np.int32(cfg.block_q) + jax.lax.broadcasted_iota(jnp.int32, (cfg.block_q, 1), 0)
    columns = j * np.int32(cfg.block_k) + jax.lax.broadcasted_iota(jnp.int32, (1, cfg.block_k), 1)
    exists = columns < np.int32(cfg.length_k)
    allowed = exists
    if mask is not None:
      allowed = allowed & mask
    if cfg.is_causal:
      allowed = allowed & (columns <= rows)
    if self.k_length is not None:
      allowed = allowed & (columns < self.k_length)
    if self.q_length is not None:
      allowed = allowed & (rows < self.q_length)
    s = jnp.where(allowed, s, _LARGE_NEGATIVE)
    return jnp.where(exists, s, _LOWEST), allowed, exists

  def multiplier(self, n: jax.Array, i: jax.Array, j: jax.Array) -> jax.Array:
    """The dropout factor of the block, ``1/keep`` where kept and 0 where dropped, broadcastable
    to ``(bq, bk)``: the mask's rows are the flat ``(b, n, t)`` index of the weights."""
    cfg = self.cfg
    ints = self.ints_ref
    mb, mn, mt, ms = cfg.mask_shape
    _, gn, gt, gs = cfg.mask_global
    u32 = lambda v: jnp.asarray(v).astype(jnp.uint32)
    # The block's offsets (inside shard_map) are 0 along shared axes; a local size of 1 is
    # shared, or one block of a sharded axis.
    batch = (u32(self.b) if mb != 1 else np.uint32(0)) + ints[4]
    head = (u32(n) if mn != 1 else np.uint32(0)) + ints[5]
    first_row = (batch * np.uint32(gn) + head) * np.uint32(gt)
    if mt != 1:
      first_row = first_row + u32(i) * np.uint32(cfg.block_q)
    shape = (cfg.block_q if mt != 1 else 1, cfg.block_k if ms != 1 else 1)
    offsets = (first_row, u32(j) * np.uint32(cfg.block_k) if ms != 1 else np.uint32(0))
    layout = MaskLayout(shape, global_shape=(int(np.prod(cfg.mask_global[:3])), gs))
    # No `& any_kept` per weight: where no unit is kept (rate 1) the scale is 0 already.
    keep = keep_mask(MaskSource((ints[0], ints[1]), offsets), layout, ints[2], np.bool_(True))
    return jnp.where(keep, self.floats_ref[0], np.float32(0))

  def key_blocks(self, i: jax.Array) -> jax.Array | int:
    """How many key blocks query block i visits (with `skip_causal`, those reaching its last
    row)."""
    cfg = self.cfg
    count = np.int32(pl.cdiv(cfg.length_k, cfg.block_k))  # int32 loop bounds, x64 or not
    if not cfg.skip_causal:
      return _bound(cfg, count, i)
    last = (i + np.int32(1)) * np.int32(cfg.block_q) + np.int32(cfg.block_k - 1)
    return jnp.minimum(jax.lax.div(last, np.int32(cfg.block_k)), count)

  def first_query_block(self, j: jax.Array) -> jax.Array | int:
    """The first query block that sees key block j (with `skip_causal`; else 0)."""
    if not self.cfg.skip_causal:
      return _bound(self.cfg, np.int32(0), j)
    return jax.lax.div(j * np.int32(self.cfg.block_k), np.int32(self.cfg.block_q))


def _split(cfg: FlashConfig, refs: tuple[Any, ...]) -> tuple[Any, Any, tuple[Any, ...]]:
  """A kernel's refs: the four scalar refs, the mask's (or None), the rest."""
  if cfg.attend_axes is None:
    return refs[:4], None, refs[4:]
  return refs[:4], refs[4], refs[5:]


def _mask_for_rows(cfg: FlashConfig, mask_ref: Any, j: jax.Array) -> jax.Array | None:
  """Key block j of the mask block a forward or dq program holds (its query rows, every key)."""
  if mask_ref is None or cfg.attend_axes is None:
    return None
  keys = pl.ds(j * np.int32(cfg.block_k), cfg.block_k) if cfg.attend_axes[3] else slice(None)
  return mask_ref[:, keys] != 0


def _forward_kernel(cfg: FlashConfig, *refs: Any) -> None:
  scalars, mask_ref, (q_ref, k_ref, v_ref, o_ref, m_ref, inv_ref) = _split(cfg, refs)
  b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block = _Block(cfg, scalars, b)
  q = q_ref[...]
  h = q.shape[-1]

  def step(j: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    m, l, acc = carry
    keys = pl.ds(j * np.int32(cfg.block_k), cfg.block_k)
    s, _, exists = block.logits(q, k_ref[keys, :], i, j, _mask_for_rows(cfg, mask_ref, j))
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
    correction = jnp.exp(m - m_new)
    p = jnp.where(exists, jnp.exp(s - m_new), np.float32(0))
    l = l * correction + jnp.sum(p, axis=1, keepdims=True)
    if cfg.dropout:
      p = p * block.multiplier(n, i, j)
    v = v_ref[keys, :]
    return m_new, l, acc * correction + _dot(p.astype(v.dtype), v, (1, 0))

  init = (
    jnp.full((cfg.block_q, 1), _LOWEST, jnp.float32),
    jnp.zeros((cfg.block_q, 1), jnp.float32),
    jnp.zeros((cfg.block_q, h), jnp.float32),
  )
  m, l, acc = jax.lax.fori_loop(np.int32(0), block.key_blocks(i), step, init)
  inverse = 1 / l  # l >= 1: the row's largest term is exp(0)
  o_ref[...] = (acc * inverse).astype(o_ref.dtype)
  m_ref[...] = m
  inv_ref[...] = inverse


def _dq_kernel(cfg: FlashConfig, *refs: Any) -> None:
  scalars, mask_ref, arrays = _split(cfg, refs)
  q_ref, k_ref, v_ref, do_ref, m_ref, inv_ref, delta_ref, dq_ref = arrays
  b, n, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block = _Block(cfg, scalars, b)
  q, do = q_ref[...], do_ref[...]
  m, inverse, delta = m_ref[...], inv_ref[...], delta_ref[...]

  def step(j: jax.Array, dq: jax.Array) -> jax.Array:
    keys = pl.ds(j * np.int32(cfg.block_k), cfg.block_k)
    k = k_ref[keys, :]
    s, allowed, exists = block.logits(q, k, i, j, _mask_for_rows(cfg, mask_ref, j))
    p = jnp.where(exists, jnp.exp(s - m) * inverse, np.float32(0))
    dp = _dot(do, v_ref[keys, :], (1, 1))
    if cfg.dropout:
      dp = dp * block.multiplier(n, i, j)
    ds = jnp.where(allowed, p * (dp - delta), np.float32(0))
    return dq + _dot(ds.astype(k.dtype), k, (1, 0))

  init = jnp.zeros(q.shape, jnp.float32)
  dq = jax.lax.fori_loop(np.int32(0), block.key_blocks(i), step, init)
  dq_ref[...] = dq * np.float32(cfg.scale)


def _dkdv_kernel(cfg: FlashConfig, *refs: Any) -> None:
  scalars, mask_ref, arrays = _split(cfg, refs)
  q_ref, k_ref, v_ref, do_ref, m_ref, inv_ref, delta_ref, dk_ref, dv_ref = arrays
  b, kv_head, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  block = _Block(cfg, scalars, b)
  k, v = k_ref[...], v_ref[...]
  count = np.int32(pl.cdiv(cfg.length_q, cfg.block_q))
  dk = jnp.zeros(k.shape, jnp.float32)
  dv = jnp.zeros(v.shape, jnp.float32)
  for g in range(cfg.groups):  # the query heads reading this key/value head
    n = kv_head * np.int32(cfg.groups) + np.int32(g)

    def step(i: jax.Array, carry: tuple[jax.Array, jax.Array], g: int = g, n: Any = n) -> Any:
      dk, dv = carry
      rows = pl.ds(i * np.int32(cfg.block_q), cfg.block_q)
      q, do = q_ref[g, rows, :], do_ref[g, rows, :]
      m, inverse = m_ref[g, rows, :], inv_ref[g, rows, :]
      mask = None
      if mask_ref is not None and cfg.attend_axes is not None:  # every query row of the group
        mask_rows = rows if cfg.attend_axes[2] else slice(None)
        mask = mask_ref[g if cfg.attend_axes[1] else 0, mask_rows, :] != 0
      s, allowed, exists = block.logits(q, k, i, j, mask)
      p = jnp.where(exists, jnp.exp(s - m) * inverse, np.float32(0))
      dp = _dot(do, v, (1, 1))
      p_dropped = p
      if cfg.dropout:
        factor = block.multiplier(n, i, j)
        p_dropped, dp = p * factor, dp * factor
      dv = dv + _dot(p_dropped.astype(do.dtype), do, (0, 0))
      ds = jnp.where(allowed, p * (dp - delta_ref[g, rows, :]), np.float32(0))
      return dk + _dot(ds.astype(q.dtype), q, (0, 0)), dv

    dk, dv = jax.lax.fori_loop(block.first_query_block(j), count, step, (dk, dv))
  dk_ref[...] = dk * np.float32(cfg.scale)
  dv_ref[...] = dv


def _scalar_specs(backend: str) -> list[pl.BlockSpec]:
  """BlockSpecs of the dropout scalars and the lengths: SMEM on TPU (whole arrays, read as
  scalars), else whole blocks of the scalars and each batch element's block of the lengths."""
  if backend == "mosaic":
    from jax.experimental.pallas import tpu as pltpu

    return [pl.BlockSpec(memory_space=pltpu.SMEM)] * 4
  whole = lambda size: pl.BlockSpec((size,), lambda *_: (0,))
  per_batch = pl.BlockSpec((None, 1), lambda b, *_: (b, 0))
  return [whole(8), whole(1), per_batch, per_batch]


def _backend_options(backend: str) -> dict[str, Any]:
  """`pallas_call`'s options for a backend: Pallas' Triton lowering on GPU (its default GPU
  backend, Mosaic GPU, refuses these kernels' small copies)."""
  if backend == "interpret":
    return {"interpret": True}
  if backend == "triton":
    from jax.experimental.pallas import triton as pltriton

    return {"compiler_params": pltriton.CompilerParams(num_warps=4, num_stages=2)}
  return {}


def _out(shape: tuple[int, ...], dtype: Any, like: jax.Array) -> jax.ShapeDtypeStruct:
  """An output of a kernel: inside `jax.shard_map` it varies over the mesh axes `like` does."""
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).manual_axis_type)


def _call(
  cfg: FlashConfig,
  kernel: Any,
  grid: tuple[int, ...],
  scalars: tuple[jax.Array, ...],
  arrays: list[tuple[jax.Array, pl.BlockSpec]],
  outs: list[tuple[jax.ShapeDtypeStruct, pl.BlockSpec]],
) -> Any:
  """The `pallas_call` of `kernel`: the scalars' refs first, then `arrays` (the mask's first
  where there is one), then `outs`."""
  return pl.pallas_call(
    functools.partial(kernel, cfg),
    grid=grid,
    in_specs=_scalar_specs(cfg.backend) + [spec for _, spec in arrays],
    out_specs=[spec for _, spec in outs],
    out_shape=[shape for shape, _ in outs],
    **_backend_options(cfg.backend),
  )(*scalars, *(a for a, _ in arrays))


def _row_mask(cfg: FlashConfig, mask: jax.Array | None) -> list[tuple[jax.Array, pl.BlockSpec]]:
  """The mask's blocks for a program of query rows (forward, dq): its rows, every key."""
  if mask is None:
    return []
  sb, sn, st, ss = cfg.attend_axes or (False,) * 4
  shape = (None, None, cfg.block_q if st else 1, mask.shape[3])
  return [
    (
      mask,
      pl.BlockSpec(shape, lambda b, n, i: (b if sb else 0, n if sn else 0, i if st else 0, 0)),
    )
  ]


def _column_mask(cfg: FlashConfig, mask: jax.Array | None) -> list[tuple[jax.Array, pl.BlockSpec]]:
  """The mask's blocks for a dk/dv program: every query row of the key/value head's group of
  query heads, its key block."""
  if mask is None:
    return []
  sb, sn, st, ss = cfg.attend_axes or (False,) * 4
  shape = (None, cfg.groups if sn else 1, mask.shape[2], cfg.block_k if ss else 1)
  return [
    (
      mask,
      pl.BlockSpec(shape, lambda b, kv, j: (b if sb else 0, kv if sn else 0, 0, j if ss else 0)),
    )
  ]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _forward(
  cfg: FlashConfig,
  scalars: tuple[jax.Array, ...],
  mask: jax.Array | None,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  b, n, t, h = q.shape
  s = k.shape[2]
  grid = (b, n, t // cfg.block_q)
  rows = pl.BlockSpec((None, None, cfg.block_q, h), lambda b, n, i: (b, n, i, 0))
  keys = pl.BlockSpec(
    (None, None, s, h), lambda b, n, i: (b, jax.lax.div(n, np.int32(cfg.groups)), 0, 0)
  )
  stats = pl.BlockSpec((None, None, cfg.block_q, 1), lambda b, n, i: (b, n, i, 0))
  row_stat = _out((b, n, t, 1), jnp.float32, q)
  out, m, inverse = _call(
    cfg,
    _forward_kernel,
    grid,
    scalars,
    _row_mask(cfg, mask) + [(q, rows), (k, keys), (v, keys)],
    [(_out(q.shape, q.dtype, q), rows), (row_stat, stats), (row_stat, stats)],
  )
  return out, m, inverse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def flash(
  cfg: FlashConfig,
  scalars: tuple[jax.Array, ...],
  mask: jax.Array | None,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
) -> jax.Array:
  """Attention of padded ``q (B, N, Tp, H)``, ``k, v (B, K, Sp, H)`` (Tp, Sp multiples of the
  blocks); `scalars` are ``uint32[8]`` (mask words, threshold, 0, batch and head
  offsets), ``float32[1]`` (the dropout scale) and the ``int32`` query and key lengths
  (``(B,)`` on TPU, ``(B, 1)`` elsewhere); `mask` the boolean mask as integers, padded with
  ones, ``(B|1, N|1, Tp|1, Sp|1)``, or None."""
  return _forward(cfg, scalars, mask, q, k, v)[0]


def _flash_fwd(
  cfg: FlashConfig,
  scalars: tuple[jax.Array, ...],
  mask: jax.Array | None,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
) -> tuple[jax.Array, tuple[Any, ...]]:
  out, m, inverse = _forward(cfg, scalars, mask, q, k, v)
  return out, (scalars, mask, q, k, v, out, m, inverse)


def _flash_bwd(cfg: FlashConfig, residuals: tuple[Any, ...], g: jax.Array) -> tuple[Any, ...]:
  scalars, mask = residuals[:2]
  grads = _backward(cfg, *residuals, g)
  no_grad = None if mask is None else _zero_cotangent(mask)
  return jax.tree.map(_zero_cotangent, scalars), no_grad, *grads


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _backward(
  cfg: FlashConfig,
  scalars: tuple[jax.Array, ...],
  mask: jax.Array | None,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  out: jax.Array,
  m: jax.Array,
  inverse: jax.Array,
  g: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """dq, dk and dv from the dq and dk/dv kernels (FlashAttention-2's backward pass)."""
  b, n, t, h = q.shape
  heads_k, s = k.shape[1], k.shape[2]
  groups = cfg.groups
  # D = rowsum(dO * O) (FlashAttention-2), per row like m.
  delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=3, keepdims=True)
  rows = pl.BlockSpec((None, None, cfg.block_q, h), lambda b, n, i: (b, n, i, 0))
  keys = pl.BlockSpec(
    (None, None, s, h), lambda b, n, i: (b, jax.lax.div(n, np.int32(groups)), 0, 0)
  )
  stats = pl.BlockSpec((None, None, cfg.block_q, 1), lambda b, n, i: (b, n, i, 0))
  (dq,) = _call(
    cfg,
    _dq_kernel,
    (b, n, t // cfg.block_q),
    scalars,
    _row_mask(cfg, mask)
    + [(q, rows), (k, keys), (v, keys), (g, rows), (m, stats), (inverse, stats), (delta, stats)],
    [(_out(q.shape, jnp.float32, q), rows)],
  )
  group_rows = pl.BlockSpec((None, groups, t, h), lambda b, kv, j: (b, kv, 0, 0))
  key_block = pl.BlockSpec((None, None, cfg.block_k, h), lambda b, kv, j: (b, kv, j, 0))
  group_stats = pl.BlockSpec((None, groups, t, 1), lambda b, kv, j: (b, kv, 0, 0))
  dk, dv = _call(
    cfg,
    _dkdv_kernel,
    (b, heads_k, s // cfg.block_k),
    scalars,
    _column_mask(cfg, mask)
    + [
      (q, group_rows),
      (k, key_block),
      (v, key_block),
      (g, group_rows),
      (m, group_stats),
      (inverse, group_stats),
      (delta, group_stats),
    ],
    [(_out(k.shape, jnp.float32, k), key_block)] * 2,
  )
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


def _no_derivative(cfg: FlashConfig, primals: Any, tangents: Any) -> Any:
  """The forward and backward kernels' own derivative: there is none (Pallas differentiates no
  kernel), so a second derivative stops here with a way out rather than deep in Pallas."""
  del cfg, primals, tangents
  raise TypeError(
    "jaxdrop.dot_product_attention with implementation='pallas' has a hand-written reverse-"
    "mode derivative whose kernels have no derivative of their own: for second derivatives "
    "(jax.hessian, grad of grad) pass implementation='xla' (the same mask)"
  )


_forward.defjvp(_no_derivative)
_backward.defjvp(_no_derivative)


flash.defvjp(_flash_fwd, _flash_bwd)


def _zero_cotangent(a: jax.Array) -> Any:
  """The scalars get no gradient: float0 zeros for integers, zeros for the dropout scale."""
  if jnp.issubdtype(a.dtype, jnp.floating):
    return jnp.zeros_like(a)
  return np.zeros(a.shape, jax.dtypes.float0)


def _heads_first(a: jax.Array, multiple: int) -> jax.Array:
  """``(B, T, N, H)`` as the kernels' ``(B, N, T, H)``, T padded with zeros to a multiple of
  `multiple` (the padding is no key and no output)."""
  a = jnp.swapaxes(a, 1, 2)
  extra = -a.shape[2] % multiple
  return a if not extra else jnp.pad(a, [(0, 0), (0, 0), (0, extra), (0, 0)])


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _power_of_two(value: int) -> int:
  return 1 << max(value - 1, 0).bit_length()


def block_sizes(
  backend: str, t: int, s: int, block_q: int | None, block_k: int | None
) -> tuple[int, int]:
  """The kernels' block sizes on `backend`: the requested ones (or the backend's default)
  rounded up to what it tiles (Mosaic TPU: queries by 8, keys by 128; Triton: powers of two
  from 16, its smallest matrix product) and no larger than the padded lengths need."""
  if backend == "mosaic":
    bq, bk = _round_up(block_q or 128, 8), _round_up(block_k or 128, 128)
    return min(bq, _round_up(t, 8)), min(bk, _round_up(s, 128))
  if backend == "triton":
    bq, bk = (_power_of_two(max(b or 64, 16)) for b in (block_q, block_k))
    return min(bq, _power_of_two(max(t, 16))), min(bk, _power_of_two(max(s, 16)))
  bq, bk = block_q or 64, block_k or 64
  return min(bq, _round_up(t, 8)), min(bk, _round_up(s, 8))


def _attention_on(
  backend: str,
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  scalars: tuple[jax.Array, ...],
  mask: jax.Array | None,
  *,
  static: dict[str, Any],
  block_q: int | None,
  block_k: int | None,
) -> jax.Array:
  """The kernels on one backend, with its block sizes and layout."""
  b, t, n, _ = q.shape
  s, heads_k = k.shape[1], k.shape[2]
  bq, bk = block_sizes(backend, t, s, block_q, block_k)
  cfg = FlashConfig(
    block_q=bq, block_k=bk, length_q=t, length_k=s, groups=n // heads_k, backend=backend, **static
  )
  ints, floats, q_lengths, k_lengths = scalars
  if backend != "mosaic":  # each batch element's lengths as a block of its own
    q_lengths, k_lengths = q_lengths.reshape(b, 1), k_lengths.reshape(b, 1)
  h = q.shape[3]
  if backend == "triton":
    # Triton's arrays are powers of two and its matrix products at least 16 wide: the head
    # size is padded with zeros, which change no logit and whose outputs are cut off.
    width = max(_power_of_two(h), 16)
    q, k, v = (jnp.pad(a, [(0, 0)] * 3 + [(0, width - h)]) for a in (q, k, v))
  q, k, v = _heads_first(q, bq), _heads_first(k, bk), _heads_first(v, bk)
  if mask is not None:
    # Padded rows and keys are allowed here (padded keys are excluded apart, padded rows cut
    # off), as in chunked; integers, as Mosaic keeps no booleans in memory (int32: its tiling).
    widths = [(0, 0), (0, 0)] + [
      (0, -size % block if size != 1 else 0) for size, block in zip(mask.shape[2:], (bq, bk))
    ]
    mask = jnp.pad(mask, widths, constant_values=True)
    mask = mask.astype(jnp.int32 if backend == "mosaic" else jnp.int8)
  out = flash(cfg, (ints, floats, q_lengths, k_lengths), mask, q, k, v)
  return jnp.swapaxes(out[:, :, :t, :h], 1, 2)


def pallas_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  q_lengths: jax.Array | None,
  k_lengths: jax.Array | None,
  mask: jax.Array | None,
  words: jax.Array | None,
  drop: Any,
  *,
  scale: float,
  is_causal: bool,
  mask_shape: tuple[int, ...],
  mask_global: tuple[int, ...],
  dropout_on: bool,
  block_q: int | None,
  block_k: int | None,
) -> jax.Array:
  """Attention of ``q (B, T, N, H)``, ``k, v (B, S, K, H)`` by the kernels of the platform
  the call is compiled for (`lax.platform_dependent`: Triton on GPU, Mosaic on TPU, interpret
  mode elsewhere), `drop` as the chunked path makes it: ``(t, any_kept, scale,
  (batch_offset, head_offset))``; `mask` the boolean mask, ``(B|1, N|1, T|1, S|1)``. Rows
  beyond `q_lengths` are 0, as in jax.nn."""
  b = q.shape[0]
  static = {
    "scale": scale,
    "is_causal": is_causal,
    # Skipping blocks above the diagonal is exact only where no row is fully masked (as in
    # chunked: jax.nn averages such a row over every key, skipped ones included).
    "skip_causal": is_causal and k_lengths is None and mask is None,
    "has_q_lengths": q_lengths is not None,
    "has_k_lengths": k_lengths is not None,
    "attend_axes": None if mask is None else tuple(size != 1 for size in mask.shape),
    "dropout": dropout_on,
    "mask_shape": mask_shape,
    "mask_global": mask_global,
  }
  ints = jnp.zeros(8, jnp.uint32)
  floats = jnp.ones(1, jnp.float32)
  if dropout_on:
    assert words is not None  # drawn whenever the mask is
    threshold, _, factor, (batch_offset, head_offset) = drop  # factor 0 where none is kept
    ints = jnp.stack(
      [words[0], words[1], threshold, jnp.uint32(0), batch_offset, head_offset]
      + [jnp.uint32(0)] * 2
    ).astype(jnp.uint32)
    floats = jnp.reshape(factor, (1,)).astype(jnp.float32)
  lengths = lambda a: jnp.zeros(b, jnp.int32) if a is None else a
  scalars = (ints, floats, lengths(q_lengths), lengths(k_lengths))
  on = lambda backend: functools.partial(
    _attention_on, backend, static=static, block_q=block_q, block_k=block_k
  )
  out = jax.lax.platform_dependent(
    q,
    k,
    v,
    scalars,
    mask,
    cuda=on("triton"),
    rocm=on("triton"),
    tpu=on("mosaic"),
    default=on("interpret"),
  )
  return _zero_padded_rows(out, q_lengths)
