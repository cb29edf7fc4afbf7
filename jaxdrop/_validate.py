"""Argument checks shared by the public functions.

Each check runs in Python on concrete values (traced values pass through) and
raises a `TypeError` or `ValueError` naming the argument and the value it got.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import SupportsFloat, TypeGuard, TypeVar, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._keys import is_typed_key, legacy_key_shape

_T = TypeVar("_T")


def is_traced(value: object) -> TypeGuard[jax.core.Tracer]:
  return isinstance(value, jax.core.Tracer)


_KEY_FIRST = "the key comes first, as in jaxdrop.dropout(key, x, rate)"
FLOAT_DTYPES = tuple(map(jnp.dtype, (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)))


def not_a_key(value: object, name: str, what: str) -> None:
  """Raises a `TypeError` with the argument-order hint if `value` is a typed PRNG key."""
  if is_typed_key(value):
    raise TypeError(f"{name} is a PRNG key, not {what}: {_KEY_FIRST}")


def float_array(x: ArrayLike, name: str = "x") -> jax.Array:
  """`x` as a JAX array of a floating dtype."""
  not_a_key(x, name, "an array of activations")
  try:
    x = jnp.asarray(x)
  except (TypeError, ValueError) as err:
    raise TypeError(
      f"{name} must be an array of a floating dtype, got {type(x).__name__} {str(x)[:80]!r}"
    ) from err
  if x.dtype not in FLOAT_DTYPES:
    # float8 formats are floating too, but x / keep overflows them (to NaN in e4m3fn) and
    # e8m0 has no zero: rejected rather than computed wrongly.
    looks_like_key = x.dtype == jnp.uint32 and x.shape == legacy_key_shape()
    raise TypeError(
      f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
      f"got dtype {x.dtype.name}"
      + (
        f"; {name} looks like a legacy PRNG key (jax.random.PRNGKey): {_KEY_FIRST}"
        if looks_like_key
        else ""
      )
    )
  return x


def _real_scalar(value: ArrayLike, name: str, what: str) -> float | None:
  """Checks a real scalar; returns it as a float if concrete, None if traced."""
  not_a_key(value, name, what)
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a real number, {what}, got {value!r}")
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    if not isinstance(value, (int, float)):
      raise TypeError(f"{name} must be a real number, {what}, got {type(value).__name__} {value!r}")
  else:
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
      raise TypeError(
        f"{name} must be a real number, {what}, got an array of dtype {np.dtype(dtype).name}"
      )
    if np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}")
  if is_traced(value):
    return None
  try:
    return real_float(value)
  except OverflowError:  # a Python int beyond float64's range
    return float("inf")


def real_float(value: ArrayLike) -> float:
  """``float(value)`` of a concrete real scalar that `_real_scalar` has checked (its static
  type, ArrayLike, admits complex numbers, which the check rejects)."""
  return float(cast(SupportsFloat, value))


def probability(value: ArrayLike, name: str = "rate") -> float | None:
  """Checks a probability; returns it as a float if concrete, None if traced."""
  number = _real_scalar(value, name, "a probability in [0, 1]")
  if number is not None and not 0.0 <= number <= 1.0:  # also rejects NaN
    raise ValueError(
      f"{name} must be in [0, 1] (the probability of dropping a unit), got {value!r}"
    )
  return number


def real_array(
  value: ArrayLike, name: str, shape: tuple[int, ...], what: str, against: str = "x"
) -> tuple[jax.Array, np.ndarray | None]:
  """A real scalar or array broadcastable to `shape`, the shape of the argument named
  `against` (it must not grow it), as a floating JAX array of `shape`'s rank (leading axes of
  size 1 added), and its values on the host when concrete (None when traced)."""
  not_a_key(value, name, what)
  if isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be {what}, got {value!r}")
  try:
    array = jnp.asarray(value)
  except (TypeError, ValueError) as err:
    raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}") from err
  if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
    raise TypeError(f"{name} must be {what}, got an array of dtype {array.dtype.name}")
  # Each axis of `value` is 1 or x's size (which may be symbolic: `==` compares expressions).
  grown = array.ndim > len(shape) or any(
    n != 1 and not n == size for n, size in zip(array.shape[::-1], shape[::-1])
  )
  if grown:
    raise ValueError(
      f"{name} must be a scalar or an array that broadcasts to {against}'s shape "
      f"{tuple(shape)}, got shape {array.shape}"
    )
  if not jnp.issubdtype(array.dtype, jnp.floating):
    array = array.astype(jnp.float32)
  array = array.reshape((1,) * (len(shape) - array.ndim) + array.shape)  # x's rank
  return array, None if is_traced(value) or is_traced(array) else np.asarray(value, np.float64)


def positive_int(value: object, name: str) -> int:
  """A Python or NumPy integer >= 1 (not a bool), as an int."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be a positive integer, got {value!r}")
  if value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")
  return int(value)


def nonnegative(value: ArrayLike, name: str) -> float | None:
  """Checks a finite real number >= 0; returns it as a float if concrete, None if traced."""
  number = _real_scalar(value, name, "finite and >= 0")
  if number is not None and not 0.0 <= number < math.inf:  # also rejects NaN
    raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
  return number


def flag(value: bool | ArrayLike, name: str) -> bool | jax.Array:
  """A Python bool, or a traced boolean scalar (selected at run time)."""
  not_a_key(value, name, "a bool")
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  dtype = getattr(value, "dtype", None)
  if dtype is None or np.dtype(dtype) != np.bool_:
    raise TypeError(f"{name} must be a bool or a boolean scalar array, got {value!r}")
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(value)}")
  return value if is_traced(value) else bool(value)


def static_bool(value: object, name: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(
      f"{name} must be a Python bool (it selects the program, not a value in it), got {value!r}"
    )
  return bool(value)


def axes(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
  """Normalises an int or a sequence of ints to distinct non-negative axes < ndim."""
  items = (value,) if not isinstance(value, Sequence) else tuple(value)
  out = []
  for item in items:
    if isinstance(item, (bool, np.bool_)):
      raise TypeError(f"{name} must hold integer axes, got {value!r}")
    try:
      axis = operator.index(item)
    except TypeError as err:
      raise TypeError(f"{name} must hold integer axes, got {value!r}") from err
    if not -ndim <= axis < ndim:
      raise ValueError(
        f"{name} has axis {axis}, out of range for an array of {ndim} dimensions, got {value!r}"
      )
    out.append(axis % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"{name} repeats an axis, got {value!r}")
  return tuple(sorted(out))


def shape(value: Sequence[int], name: str) -> tuple[int, ...]:
  """A sequence of non-negative ints (not bools) as a tuple; a size may be symbolic
  (`jax.export`, such as ``x.shape`` of a symbolic input), and is non-negative."""
  try:
    if any(isinstance(d, (bool, np.bool_)) for d in value):
      raise TypeError
    out = tuple(d if jax.export.is_symbolic_dim(d) else operator.index(d) for d in value)
  except TypeError as err:
    raise TypeError(f"{name} must be a sequence of integers, got {value!r}") from err
  if any(d < 0 for d in out if not jax.export.is_symbolic_dim(d)):
    raise ValueError(f"{name} must hold non-negative sizes, got {value!r}")
  return cast(tuple[int, ...], out)  # a symbolic size stands for an int, as in jax's shapes


def choice(value: _T, options: Sequence[str | None], name: str) -> _T:
  """`value`, unchanged (its type too: a `Literal` stays one), if it is one of `options`."""
  if value not in options:
    raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
  return value


def mask_shape(shape: tuple[int, ...], shared_axes: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(1 if axis in shared_axes else size for axis, size in enumerate(shape))


def partition_spec(
  value: jax.sharding.PartitionSpec | None, ndim: int, name: str
) -> jax.sharding.PartitionSpec | None:
  """None, or a `PartitionSpec` of at most `ndim` entries."""
  if value is None:
    return None
  if not isinstance(value, jax.sharding.PartitionSpec):
    raise TypeError(f"{name} must be a jax.sharding.PartitionSpec or None, got {value!r}")
  if len(value) > ndim:
    raise ValueError(f"{name} has {len(value)} entries, more than the {ndim} axes of x: {value!r}")
  return value


def out_sharding(
  value: jax.sharding.NamedSharding | jax.sharding.PartitionSpec | None, ndim: int, name: str
) -> jax.sharding.NamedSharding | None:
  """None, or a `NamedSharding` for a result of `ndim` axes (a `PartitionSpec` is taken on
  the mesh set by `jax.set_mesh`)."""
  if value is None:
    return None
  if isinstance(value, jax.sharding.PartitionSpec):
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      raise ValueError(
        f"{name}={value!r} is a PartitionSpec, which needs a mesh: call inside "
        "`with jax.set_mesh(mesh):` or pass a jax.sharding.NamedSharding"
      )
    value = jax.sharding.NamedSharding(mesh, value)
  if not isinstance(value, jax.sharding.NamedSharding):
    raise TypeError(
      f"{name} must be a jax.sharding.NamedSharding, a PartitionSpec or None, got {value!r}"
    )
  if len(value.spec) > ndim:
    raise ValueError(
      f"{name} has {len(value.spec)} entries, more than the {ndim} axes of the result: "
      f"{value.spec!r}"
    )
  if any(entry is not None and not isinstance(entry, (str, tuple)) for entry in value.spec):
    raise ValueError(f"{name}'s entries must be mesh axis names or None, got {value.spec!r}")
  named = mesh_axes(value.spec)
  explicit = named & set(value.mesh.explicit_axes)
  if explicit and explicit != named:
    raise ValueError(
      f"{name}={value.spec!r} names explicit mesh axes ({', '.join(sorted(explicit))}) and "
      f"others ({', '.join(sorted(named - explicit))}): use axes of one kind"
    )
  return value


def axis_names(entry: object) -> tuple[str, ...]:
  """The mesh axis names of one `PartitionSpec` entry: None, a name or a tuple of names."""
  return () if entry is None else entry if isinstance(entry, tuple) else (cast(str, entry),)


def mesh_axes(spec: jax.sharding.PartitionSpec) -> set[str]:
  """The mesh axis names a `PartitionSpec` uses."""
  return set().union(*map(axis_names, spec))
