"""DropBlock: Bernoulli seeds grown into contiguous blocks, with the seed rate solved so that
`rate` is the expected fraction of units dropped."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import types
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate as check
from ._core import forward_mode_hint, noise_op
from ._dropout import Autodiff, check_common, checked_key, nan_unless, require_key
from ._keys import mask_words, threefry2x32
from ._mask import MaskLayout, MaskSource, drop_threshold, keep_mask, mask_layout, standard_normal

# Newton's method from 0 on a convex decreasing function never overshoots; at most 9 steps
# reached float64's fixed point in every case tried (rates 1e-9 to 1 - 2**-24, maps 7 to
# 224 wide, blocks 1 to 7, one to three spatial axes); float32 needs fewer.
_NEWTON_STEPS = 16

# Counters hashing the mask words into the noise words of `with_noise` ("nois", "e" in ASCII).
_NOISE_DOMAIN = (np.uint32(0x6E6F6973), np.uint32(0x65))


def _coverage(size: int, block: int, xp: types.ModuleType = np) -> Any:
  """How many valid block centres along one axis cover each position (centres keep blocks
  inside the map): NumPy on the host, or jax.numpy (an iota, recomputed rather than stored
  as a constant under `jax.checkpoint`)."""
  low, high = (block - 1) // 2, block // 2
  p = xp.arange(size)
  first, last = xp.maximum(p - high, low), xp.minimum(p + low, size - 1 - high)
  return xp.maximum(last - first + 1, 0)


def coverage_table(sizes: Sequence[Any], block: int) -> tuple[np.ndarray, jax.Array]:
  """``(n, w)``: every number of block centres that can cover a position of a map of `sizes`
  (the products of one count per axis, each 1 to `block`; the first is 1) and the fraction
  of positions covered by each (0 where a count does not occur).

  Built from the sizes as traced values, so that they may be symbolic (`jax.export`) and
  the seed rate is then solved by the same operations at every size. Along an axis of
  length ``L`` the centres ``c`` number ``M = L - b + 1``; the coverage rises 1, 2, ... to
  ``K = min(b, M)`` from each end, and the ``L - 2 (K - 1)`` middle positions have ``K``.
  (Closed form rather than counting `_coverage`: counting compares every position with every
  count, a per-element temporary that ``test_jax_pins`` forbids; the test suite checks the two
  agree.)
  """
  counts = np.arange(1, block + 1)
  fractions = []
  for size in sizes:
    length = jnp.asarray(size, jnp.int32)
    most = jnp.minimum(block, length - block + 1)
    per_count = jnp.where(counts < most, 2, jnp.where(counts == most, length - 2 * (most - 1), 0))
    fractions.append(per_count.astype(jnp.float32) / length.astype(jnp.float32))
  n = np.asarray([math.prod(c) for c in itertools.product(counts, repeat=len(sizes))], np.float32)
  w = functools.reduce(lambda w, f: (w[:, None] * f[None, :]).reshape(-1), fractions)
  return n, w


def seed_rate(rate: jax.Array, n: np.ndarray, w: jax.Array) -> jax.Array:
  r"""The seed probability :math:`\gamma` with
  :math:`\sum_j w_j (1 - \gamma)^{n_j} = 1 - \text{rate}` (float32; `rate` in [0, 1]).

  In :math:`u = -\log(1 - \gamma)` the left side's logarithm,
  :math:`h(u) = \log \sum_j w_j e^{-n_j u}`, is convex and decreasing, so Newton's method
  from :math:`u = 0` rises to the root without overshooting. `h` is evaluated as
  :math:`-n_0 u + \operatorname{log1p}(\sum_j w_j \operatorname{expm1}(-(n_j - n_0) u))`,
  accurate for small rates too.
  """
  rate = jnp.asarray(rate, jnp.float32)
  below_one = rate < 1
  target = jnp.log1p(-jnp.where(below_one, rate, 0.5))
  excess = n - n[0]

  def newton(_: int, u: jax.Array) -> jax.Array:
    e = jnp.exp(-excess * u)
    h = -n[0] * u + jnp.log1p(jnp.sum(w * jnp.expm1(-excess * u)))
    slope = -jnp.sum(w * n * e) / jnp.sum(w * e)
    return u - (h - target) / slope

  u = jax.lax.fori_loop(0, _NEWTON_STEPS, newton, jnp.zeros((), jnp.float32))
  # Below 1 stays below 1 (a float32 gamma may round up to 1 for rates within 2**-24 of it).
  gamma = jnp.minimum(-jnp.expm1(-u), np.float32(1 - 2**-24))
  return jnp.where(below_one, gamma, 1)


@dataclasses.dataclass(frozen=True)
class _BlockDraw:
  """DropBlock's draw: Bernoulli seeds at valid centres, grown into blocks."""

  block_size: int
  spatial_axes: tuple[int, ...]
  scale_by_keep: bool = True

  def _broadcast(self, vector: jax.Array, axis: int, ndim: int) -> jax.Array:
    return vector.reshape(tuple(-1 if a == axis else 1 for a in range(ndim)))

  def __call__(
    self,
    source: MaskSource,
    layout: MaskLayout,
    t: jax.Array,
    any_kept: jax.Array,
    gamma: jax.Array,
  ) -> tuple[jax.Array, jax.Array]:
    shape = layout.shape
    ndim, b = len(shape), self.block_size
    low, high = (b - 1) // 2, b // 2
    seeds = ~keep_mask(source, layout, t, True)
    coverage = jnp.ones((1,) * ndim, jnp.float32)
    for axis in self.spatial_axes:
      p = jnp.arange(shape[axis])
      seeds = seeds & self._broadcast((p >= low) & (p <= shape[axis] - 1 - high), axis, ndim)
      coverage = coverage * self._broadcast(
        _coverage(shape[axis], b, jnp).astype(jnp.float32), axis, ndim
      )
    window = tuple(b if axis in self.spatial_axes else 1 for axis in range(ndim))
    padding = tuple((high, low) if axis in self.spatial_axes else (0, 0) for axis in range(ndim))
    dropped = jax.lax.reduce_window(seeds, False, jax.lax.bitwise_or, window, (1,) * ndim, padding)
    if not self.scale_by_keep:
      return ~dropped & any_kept, jnp.ones((), jnp.float32) + (gamma - gamma)  # NaN stays NaN
    # Position p is kept with probability (1 - gamma) ** coverage(p): scale each one by its inverse.
    # At rate 1 (gamma 1) every position is covered: p_keep is 0, built without log(0).
    every = gamma >= 1
    p_keep = jnp.where(every, 0, jnp.exp(coverage * jnp.log1p(-jnp.where(every, 0, gamma))))
    scale = jnp.where(p_keep == 0, 0, 1 / jnp.where(p_keep == 0, 1, p_keep))  # NaN stays NaN
    return ~dropped & any_kept, scale


def _fits(block_size: int, size: Any) -> bool | None:
  """Whether a block of `block_size` fits an axis of `size`; None where the size is symbolic
  (`jax.export`) and its constraints leave it open."""
  try:
    return bool(size >= block_size)
  except jax.errors.InconclusiveDimensionOperation:
    return None


@functools.partial(
  jax.jit, static_argnames=("draw", "recompute", "autodiff", "mask_shape", "with_noise")
)
def _drop_block(
  key: jax.Array,
  x: jax.Array,
  rate: ArrayLike,
  deterministic: bool | jax.Array,
  *,
  draw: _BlockDraw,
  recompute: bool,
  autodiff: Autodiff,
  mask_shape: tuple[int, ...],
  with_noise: bool,
) -> jax.Array:
  rate = jnp.asarray(rate, jnp.float32)
  valid = (rate >= 0) & (rate <= 1)
  n, w = coverage_table([x.shape[axis] for axis in draw.spatial_axes], draw.block_size)
  seeds = drop_threshold(seed_rate(jnp.where(valid, rate, 0), n, w))
  # No seed when deterministic or when a traced rate is invalid; the latter makes gamma, and
  # so every unit's scale, NaN: a loud output rather than a silently clipped rate.
  t = jnp.where(deterministic | ~valid, jnp.uint32(0), seeds.t)
  realised_gamma = jnp.where(deterministic, 0, seeds.drop + nan_unless(valid, seeds.drop.dtype))
  any_kept = (rate < 1) | deterministic | ~valid
  affine = None
  if with_noise:
    # N(0, 1) where blocks are dropped, from words of its own (the seeds' bits would make the
    # noise at a seed's centre low), hashed from the mask words with Threefry like every key.
    # It does not depend on x, so it needs no derivative.
    words = mask_words(key)
    noise_source = MaskSource(jnp.stack(threefry2x32(words[0], words[1], *_NOISE_DOMAIN)))
    noise = standard_normal(noise_source, mask_layout(x, mask_shape))
    affine = (jnp.zeros((), jnp.float32), noise)
  return noise_op(
    MaskSource(mask_words(key)),
    x,
    (t, any_kept, realised_gamma),
    draw=draw,
    mask_shape=mask_shape,
    recompute=recompute,
    autodiff=autodiff,
    affine=affine,
  )


def drop_block(
  key: jax.Array | None,
  x: ArrayLike,
  rate: ArrayLike,
  block_size: int,
  *,
  spatial_axes: Sequence[int] = (1, 2),
  couple_channels: bool = False,
  batch_axis: int | None = 0,
  scale_by_keep: bool | None = None,
  with_noise: bool = False,
  deterministic: bool | ArrayLike = False,
  recompute: bool = True,
  autodiff: Literal["vjp", "jvp"] = "vjp",
) -> jax.Array:
  r"""DropBlock: drops contiguous ``block_size`` × ``block_size`` regions of each feature map.

  Seeds are drawn at the centres whose block lies inside the map, each with probability
  :math:`\gamma`, and every seed drops the :math:`b \times b` block around it (a max-pool
  of the seeds). Each example and channel gets its own blocks, unless `couple_channels`
  (timm's default) shares one spatial mask by all channels of an example. A position :math:`p`
  covered by :math:`n_p` possible centres is then kept with probability
  :math:`(1 - \gamma)^{n_p}`, and :math:`\gamma` is solved (in float32) so that the
  expected fraction of dropped units is `rate`:

  .. math::

     \frac{1}{|P|} \sum_{p \in P} \left[1 - (1 - \gamma)^{n_p}\right] = \text{rate}.

  The paper's :math:`\gamma = \frac{\text{rate}}{b^2} \frac{H W}{(H - b + 1)(W - b + 1)}`
  is this equation's first-order solution: it ignores that blocks overlap, so the
  fraction it drops falls below the rate (0.37 at rate 0.5 and 0.55 at rate 0.9 for
  b = 7 on a 32 × 32 map; the docs' DropBlock guide has the table). Each kept unit is scaled by
  :math:`(1 - \gamma)^{-n_p}`, so :math:`\mathbb{E}[y] = x` holds exactly at every
  position. (The paper renormalises by the realised count of kept units instead; the
  per-position factor is unbiased everywhere, needs no reduction across the array, and so
  costs no collective on sharded arrays.) The derivative is the same mask and scale
  applied to the gradient. More or fewer spatial axes work too (a 1-D signal, a 3-D
  volume), with blocks of :math:`b^k`. ``scale_by_keep=False`` keeps survivors unscaled,
  and ``with_noise=True`` (timm's option) fills dropped units with :math:`\mathcal{N}(0, 1)`
  noise (from words hashed out of the key's mask words with Threefry) instead of 0, survivors
  unscaled.

  jaxdrop keeps ``couple_channels=False`` by default: independent blocks per channel is what
  `drop_block` has always drawn, so existing masks for a key stay the same.

  The layout is not guessed: the default `spatial_axes` (1, 2) is NHWC (Flax, Haiku,
  Keras) and also the (C, H, W) of a single unbatched example (Equinox); NCHW input
  (PyTorch ports, `jax.lax.conv`'s default) needs ``spatial_axes=(2, 3)``, or the blocks
  run across channels and rows.

  Args:
    key: a PRNG key, as for `dropout`.
    x: a floating array, NHWC by default.
    rate: the expected fraction of units to drop, in [0, 1]; may be traced. Rate 1 drops every unit.
      Under `jit` a rate outside [0, 1] or NaN cannot raise: while training it makes the whole
      output NaN, and with ``jax.config.update("jax_debug_nans", True)`` JAX reruns the call
      eagerly, where the check raises a ValueError naming the rate.
    block_size: the block's side, at least 1 and at most every spatial size. Under
      `jax.export` a spatial size may be symbolic if its constraints say the block fits
      (``symbolic_shape("b, h, w, c", constraints=("h >= 7", "w >= 7"))``).
    spatial_axes: the axes the blocks span (default (1, 2); (2, 3) for NCHW).
    couple_channels: share one spatial mask by every channel of an example (every axis but
      `batch_axis` and the spatial ones); default False, a mask per channel.
    batch_axis: with `couple_channels`, the batch axis (default 0), or None for an
      unbatched example.
    scale_by_keep: scale survivors so that :math:`\mathbb{E}[y] = x` (the default, True
      unless `with_noise`) or leave them as they are (False).
    with_noise: fill dropped units with standard normal noise instead of 0 (survivors are
      then unscaled, so ``scale_by_keep=True`` is an error).
    deterministic: if True, returns `x` unchanged; may be a traced boolean.
    recompute, autodiff: as for `dropout`.

  Returns:
    An array with the shape and dtype of `x`.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxdrop
    >>> y = jaxdrop.drop_block(jax.random.key(0), jnp.ones((64, 32, 32, 1)), 0.3, 7)
    >>> dropped = float((y == 0).mean())  # 0.3 in expectation; blocks make it vary
    >>> abs(dropped - 0.3) < 0.05
    True

  References:
    Ghiasi, Lin and Le, "DropBlock: a regularization method for convolutional
    networks", NeurIPS (2018).
  """
  x, rate_value, deterministic, recompute, autodiff = check_common(
    x, rate, deterministic, recompute, autodiff
  )
  axes = check.axes(spatial_axes, x.ndim, "spatial_axes")
  if not axes:
    raise ValueError(f"spatial_axes must name at least one axis, got {spatial_axes!r}")
  if isinstance(block_size, (bool, np.bool_)) or not isinstance(block_size, (int, np.integer)):
    raise TypeError(f"block_size must be a positive integer, got {block_size!r}")
  with_noise = check.static_bool(with_noise, "with_noise")
  if scale_by_keep is None:
    scale_by_keep = not with_noise
  scale_by_keep = check.static_bool(scale_by_keep, "scale_by_keep")
  if with_noise and scale_by_keep:
    raise ValueError(
      "with_noise=True leaves survivors unscaled (the noise takes the dropped "
      "units' place); scale_by_keep=True cannot apply with it"
    )
  mask_shape = x.shape
  batch = () if batch_axis is None else check.axes(batch_axis, x.ndim, "batch_axis")
  if check.static_bool(couple_channels, "couple_channels"):
    if len(batch) > 1 or set(batch) & set(axes):
      raise ValueError(
        f"batch_axis must be one axis outside spatial_axes {axes}, or None, got {batch_axis!r}"
      )
    mask_shape = tuple(
      size if axis in axes or axis in batch else 1 for axis, size in enumerate(x.shape)
    )
  key = checked_key(key)
  if x.size == 0 and block_size >= 1:
    return x
  fits = {axis: _fits(block_size, x.shape[axis]) for axis in axes}
  if block_size < 1 or False in fits.values():
    # The hint only where the block would fit if x were NCHW (axes 2 and 3 spatial).
    nchw = (
      axes == (1, 2)
      and x.ndim == 4
      and block_size >= 1
      and all(_fits(block_size, x.shape[a]) for a in (2, 3))
    )
    smallest = functools.reduce(jax.core.min_dim, [x.shape[axis] for axis in axes])
    raise ValueError(
      f"block_size must be between 1 and the smallest spatial size {smallest} "
      f"(spatial axes {axes} of shape {x.shape}), got {block_size!r}"
      + ("; for NCHW input pass spatial_axes=(2, 3)" if nchw else "")
    )
  undecided = [axis for axis, fit in fits.items() if fit is None]
  if undecided:
    axis = undecided[0]
    raise ValueError(
      f"block_size {block_size} must fit spatial axis {axis} of shape {x.shape}, whose "
      f"symbolic size {x.shape[axis]} may be smaller: declare the bound where the shape is "
      f"made, jax.export.symbolic_shape(..., constraints=('{x.shape[axis]} >= {block_size}',)) "
      "(the exported function then refuses smaller inputs)"
    )
  if deterministic is True or rate_value == 0.0:
    return x
  key = require_key("drop_block", key, rate, deterministic)
  draw = _BlockDraw(int(block_size), axes, scale_by_keep)
  with forward_mode_hint("drop_block"):
    return _drop_block(
      key,
      x,
      rate,
      deterministic,
      draw=draw,
      recompute=recompute,
      autodiff=autodiff,
      mask_shape=mask_shape,
      with_noise=with_noise,
    )
