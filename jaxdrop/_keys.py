"""Normalising PRNG keys and deriving the two Threefry words that seed a mask."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

# Domain-separation constant: the mask stream of a key differs from every stream
# that `jax.random` draws from the same key. (First digits of sqrt(2) and sqrt(3).)
_DOMAIN = (np.uint32(0x6A09E667), np.uint32(0xBB67AE85))


# Threefry-2x32 (Salmon et al., SC 2011): 20 rounds in five groups of four, the rotation
# constants alternating between the two rows, a key injection after each group.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(v: jax.Array, bits: int) -> jax.Array:
  return jax.lax.shift_left(v, np.uint32(bits)) | jax.lax.shift_right_logical(
    v, np.uint32(32 - bits)
  )


def threefry2x32(
  k0: ArrayLike, k1: ArrayLike, x0: ArrayLike, x1: ArrayLike
) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 (20 rounds) of key words and counters, broadcasting; the same function as
  JAX's `threefry2x32_p` (a test pins it), written out in plain operations.

  JAX lowers its primitive on CPU to a rolled loop, whose carries XLA cannot fuse into the
  consumer: a mask with short rows (a trailing axis of size 1) then materialised 8 bytes per
  element. Unrolled, the hash fuses into the mask like any elementwise code.
  """
  shape = jnp.broadcast_shapes(jnp.shape(k0), jnp.shape(k1), jnp.shape(x0), jnp.shape(x1))
  k0, k1 = jnp.asarray(k0, jnp.uint32), jnp.asarray(k1, jnp.uint32)
  keys = (k0, k1, k0 ^ k1 ^ _PARITY)
  a = jnp.broadcast_to(jnp.asarray(x0, jnp.uint32) + k0, shape)
  b = jnp.broadcast_to(jnp.asarray(x1, jnp.uint32) + k1, shape)
  for group in range(5):
    for bits in _ROTATIONS[group % 2]:
      a = a + b
      b = _rotl(b, bits) ^ a
    a = a + keys[(group + 1) % 3]
    b = b + keys[(group + 2) % 3] + np.uint32(group + 1)
  return a, b


def is_typed_key(key: object) -> bool:
  dtype = getattr(key, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def legacy_key_shape() -> tuple[int, ...]:
  """The shape of a legacy uint32 key of the default implementation (``(2,)`` for Threefry)."""
  return _legacy_key_shape(_default_prng_impl())


def _default_prng_impl() -> str:
  # jax.config's flags are registered at run time: its stub declares none of them.
  return jax.config.jax_default_prng_impl  # type: ignore[attr-defined]


@functools.cache
def _legacy_key_shape(impl: str) -> tuple[int, ...]:
  return jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=impl))).shape


def as_typed_key(key: jax.Array, *, name: str = "key", wrap: bool = True) -> jax.Array:
  """Returns `key` as a single typed key; legacy ``uint32`` keys are wrapped (or, with
  ``wrap=False``, returned as they are once checked: `mask_words` reads both, and skipping
  the wrap saves an eager dispatch per call).

  Raises a `TypeError` for anything that is not a key and a `ValueError` for a
  batch of keys, with the advice to `jax.vmap` over it.
  """
  if is_typed_key(key):
    if key.shape != ():
      raise ValueError(
        f"{name} must be a single PRNG key, got a batch of keys of shape {key.shape}; "
        f"for one mask per key, map over them: jax.vmap(lambda k, x: ..., in_axes=(0, 0))"
      )
    return key
  dtype = getattr(key, "dtype", None)
  if dtype is None or np.dtype(dtype) != np.uint32:
    raise TypeError(
      f"{name} must be a PRNG key such as jax.random.key(0) (or a legacy uint32 key from "
      f"jax.random.PRNGKey), got {type(key).__name__}"
      + (f" of dtype {np.dtype(dtype).name}" if dtype is not None else f" {key!r}")
    )
  expected = legacy_key_shape()
  if key.shape == expected:
    return jax.random.wrap_key_data(key) if wrap else key
  if key.shape[-len(expected) :] == expected:
    raise ValueError(
      f"{name} must be a single PRNG key, got a batch of legacy keys of shape {key.shape}; "
      f"for one mask per key, map over them: jax.vmap(lambda k, x: ..., in_axes=(0, 0))"
    )
  raise ValueError(
    f"{name} is a uint32 array of shape {key.shape}, which is not a legacy key of the "
    f"default implementation {_default_prng_impl()} (shape {expected}); "
    "pass a typed key from jax.random.key"
  )


def mask_words(key: jax.Array) -> jax.Array:
  """Hashes a typed key of any implementation (or a legacy uint32 key) down to two uint32
  words, ``uint32[2]``.

  Every implementation (threefry2x32, rbg, unsafe_rbg, philox, ...) is folded
  with Threefry-2x32, so the mask is drawn the same way, per element and per
  shard, whatever the key's implementation, and per-key under `jax.vmap`.
  """
  data = (jax.random.key_data(key) if is_typed_key(key) else jnp.asarray(key, jnp.uint32)).reshape(
    -1
  )
  words = [data[i] for i in range(data.shape[0])]
  if len(words) % 2:
    words.append(jnp.uint32(0))
  a, b = threefry2x32(words[0], words[1], *_DOMAIN)
  for i in range(2, len(words), 2):
    a, b = threefry2x32(a, b, words[i], words[i + 1])
  return jnp.stack([a, b])
