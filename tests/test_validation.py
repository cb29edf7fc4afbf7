"""Bad input gets a clear error naming the argument and the value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

import jaxdrop

KEY = jax.random.key(0)
X = jnp.ones((4, 6))


@pytest.mark.parametrize(
  "rate", [-0.1, 1.01, 2, float("nan"), float("inf"), np.float32(-1), jnp.float32(1.5)]
)
def test_rate_out_of_range(rate):
  with pytest.raises(ValueError, match=r"rate must be in \[0, 1\].*got"):
    jaxdrop.dropout(KEY, X, rate)


@pytest.mark.parametrize("rate", [True, "0.5", None, 0.5j, jnp.array(1, jnp.bool_)])
def test_rate_wrong_type(rate):
  with pytest.raises(TypeError, match="rate must be a real number"):
    jaxdrop.dropout(KEY, X, rate)


def test_rate_not_scalar():
  with pytest.raises(ValueError, match=r"rate must be a scalar, got an array of shape \(2,\)"):
    jaxdrop.dropout(KEY, X, jnp.array([0.1, 0.2]))
  with pytest.raises(ValueError, match="rate must be a scalar"):
    jax.jit(lambda r: jaxdrop.dropout(KEY, X, r))(jnp.array([0.1, 0.2]))


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_, jnp.complex64])
def test_non_float_input(dtype):
  with pytest.raises(
    TypeError, match=f"x must have a floating dtype.*got dtype {jnp.dtype(dtype).name}"
  ):
    jaxdrop.dropout(KEY, jnp.zeros(3, dtype), 0.5)


def test_python_int_input_is_rejected():
  with pytest.raises(TypeError, match="x must have a floating dtype"):
    jaxdrop.dropout(KEY, [1, 2, 3], 0.5)


def test_missing_key():
  with pytest.raises(TypeError, match="dropout needs a PRNG key.*key=None"):
    jaxdrop.dropout(None, X, 0.5)
  with pytest.raises(TypeError, match="dropout needs a PRNG key"):
    jax.jit(lambda r: jaxdrop.dropout(None, X, r))(0.0)  # a traced rate may be nonzero
  with pytest.raises(TypeError, match="dropout needs a PRNG key"):
    jax.jit(lambda d: jaxdrop.dropout(None, X, 0.5, deterministic=d))(True)


def test_batched_typed_key_says_vmap():
  with pytest.raises(ValueError, match=r"batch of keys of shape \(3,\).*jax.vmap"):
    jaxdrop.dropout(jax.random.split(KEY, 3), X, 0.5)


def test_batched_legacy_key_says_vmap():
  with pytest.raises(ValueError, match=r"batch of legacy keys of shape \(3, 2\).*jax.vmap"):
    jaxdrop.dropout(jax.random.key_data(jax.random.split(KEY, 3)), X, 0.5)


@pytest.mark.parametrize("key", [0, 1.5, jnp.zeros(2, jnp.int32), "seed"])
def test_not_a_key(key):
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    jaxdrop.dropout(key, X, 0.5)


def test_uint32_array_of_the_wrong_shape():
  with pytest.raises(ValueError, match=r"shape \(3,\), which is not a legacy key"):
    jaxdrop.dropout(jnp.zeros(3, jnp.uint32), X, 0.5)


@pytest.mark.parametrize(
  "dims,match",
  [
    ((2,), "axis 2, out of range"),
    ((-3,), "axis -3, out of range"),
    ((0, -2), "repeats an axis"),
  ],
)
def test_bad_broadcast_dims(dims, match):
  with pytest.raises(ValueError, match=f"broadcast_dims .*{match}|broadcast_dims has {match}"):
    jaxdrop.dropout(KEY, X, 0.5, broadcast_dims=dims)


@pytest.mark.parametrize("dims", [(0.5,), (True,), ("a",)])
def test_non_integer_broadcast_dims(dims):
  with pytest.raises(TypeError, match="broadcast_dims must hold integer axes"):
    jaxdrop.dropout(KEY, X, 0.5, broadcast_dims=dims)


@pytest.mark.parametrize("value", [1, "yes", None, jnp.array([True, False])])
def test_bad_deterministic(value):
  with pytest.raises((TypeError, ValueError), match="deterministic must be"):
    jaxdrop.dropout(KEY, X, 0.5, deterministic=value)


@pytest.mark.parametrize("name", ["inverted", "recompute"])
def test_static_flags_must_be_python_bools(name):
  with pytest.raises(TypeError, match=f"{name} must be a Python bool"):
    jaxdrop.dropout(KEY, X, 0.5, **{name: 1})
  with pytest.raises(TypeError, match=f"{name} must be a Python bool"):
    jax.jit(lambda flag: jaxdrop.dropout(KEY, X, 0.5, **{name: flag}))(True)


def test_bad_autodiff():
  with pytest.raises(ValueError, match="autodiff must be one of 'vjp', 'jvp', got 'fwd'"):
    jaxdrop.dropout(KEY, X, 0.5, autodiff="fwd")


@pytest.mark.parametrize(
  "call",
  [
    lambda: jaxdrop.dropout(X, 0.5, KEY),  # PyTorch's order
    lambda: jaxdrop.dropout(KEY, X, KEY),
    lambda: jaxdrop.dropout(KEY, X, 0.5, deterministic=KEY),
    lambda: jaxdrop.channel_dropout(KEY, X, KEY),
  ],
)
def test_a_key_in_the_wrong_place_gets_the_order_hint(call):
  with pytest.raises(TypeError, match="is a PRNG key, not .*the key comes first"):
    call()


def test_a_legacy_key_in_the_place_of_x_gets_the_order_hint():
  with pytest.raises(TypeError, match="x looks like a legacy PRNG key.*the key comes first"):
    jaxdrop.dropout(X, jax.random.PRNGKey(0), 0.5)


def test_a_rate_beyond_float_range_is_the_rate_error():
  with pytest.raises(ValueError, match=r"rate must be in \[0, 1\].*got 1000"):
    jaxdrop.dropout(KEY, X, 10**400)


@pytest.mark.parametrize("member", ["dropout", "gaussian_dropout", "drop_block", "drop_connect"])
def test_a_bad_key_is_an_error_even_when_unused(member):
  f = {
    "dropout": jaxdrop.dropout,
    "gaussian_dropout": jaxdrop.gaussian_dropout,
    "drop_connect": jaxdrop.drop_connect,
    "drop_block": lambda k, x, r, **kw: jaxdrop.drop_block(k, x, r, 1, **kw),
  }[member]
  x = jnp.ones((2, 4, 4, 3))
  for kwargs in ({"deterministic": True}, {}):
    with pytest.raises(TypeError, match="key must be a PRNG key"):
      f("not a key", x, 0.5 if kwargs else 0.0, **kwargs)
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    jaxdrop.make_mask("not a key", (2, 3), 0.0)


def test_the_size_limit_message_names_rows_and_columns():
  with pytest.raises(
    ValueError,
    match=r"fewer than 2\*\*32 rows \(the product of all axes but the "
    r"last, here 4294967296\)",
  ):
    jax.eval_shape(
      lambda x: jaxdrop.dropout(KEY, x, 0.5), jax.ShapeDtypeStruct((65536, 65536, 2), jnp.float32)
    )


def test_mc_dropout_with_the_key_last_in_fn_names_fns_signature():
  with pytest.raises(TypeError, match=r"mc_dropout calls fn\(key, \*args\), the key first"):
    jaxdrop.mc_dropout(lambda x, key: jaxdrop.dropout(key, x, 0.5), KEY, 4, X)


def test_eager_calls_with_a_legacy_key_do_no_per_call_key_work(monkeypatch):
  # A legacy key is checked against a cached shape and read as it is: no eval_shape and no
  # wrap_key_data per call (each was an eager dispatch, ~1 ms together), and the same mask.
  legacy = jax.random.PRNGKey(3)
  expected = jaxdrop.dropout(jax.random.wrap_key_data(legacy), X, 0.5)
  expected_bits = jaxdrop.random_bits(jax.random.wrap_key_data(legacy), (3,))
  jaxdrop.dropout(legacy, X, 0.5)

  def forbidden(*args, **kwargs):
    raise AssertionError("per-call key work")

  monkeypatch.setattr(jax, "eval_shape", forbidden)
  monkeypatch.setattr(jax.random, "wrap_key_data", forbidden)
  np.testing.assert_array_equal(jaxdrop.dropout(legacy, X, 0.5), expected)
  np.testing.assert_array_equal(jaxdrop.random_bits(legacy, (3,)), expected_bits)


@pytest.mark.parametrize(
  "dtype", ["float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "float8_e4m3fnuz"]
)
def test_float8_inputs_are_rejected_not_turned_into_nan(dtype):
  # float8 overflows x / keep (e4m3fn has no inf: NaN) and e8m0 cannot hold a zero.
  x = jnp.full(64, 104.0, jnp.float32).astype(getattr(jnp, dtype))
  with pytest.raises(TypeError, match=f"x must have a floating dtype .*got dtype {dtype}"):
    jaxdrop.dropout(KEY, x, 0.8)


def test_random_bits_out_sharding():
  mesh = jax.make_mesh((1,), ("d",))
  bits = jaxdrop.random_bits(KEY, (4, 6))
  sharded = jaxdrop.random_bits(KEY, (4, 6), out_sharding=jax.NamedSharding(mesh, P("d")))
  np.testing.assert_array_equal(sharded, bits)  # the same bits, sharded (tests/multidevice)
  with pytest.raises(ValueError, match=r"out_sharding=P\('d',\) is a PartitionSpec, which needs a"):
    jaxdrop.random_bits(KEY, (4, 6), out_sharding=P("d"))
  with pytest.raises(ValueError, match="out_sharding has 3 entries, more than the 2 axes"):
    jaxdrop.random_bits(KEY, (4, 6), out_sharding=jax.NamedSharding(mesh, P("d", None, None)))
  with pytest.raises(TypeError, match="out_sharding must be a jax.sharding.NamedSharding"):
    jaxdrop.random_bits(KEY, (4, 6), out_sharding="d")
  mixed = jax.make_mesh((1, 1), ("e", "a"), axis_types=(AxisType.Explicit, AxisType.Auto))
  with pytest.raises(ValueError, match=r"names explicit mesh axes \(e\) and others \(a\)"):
    jaxdrop.random_bits(KEY, (4, 6), out_sharding=jax.NamedSharding(mixed, P("e", "a")))
  with pytest.raises(ValueError, match="entries must be mesh axis names or None"):
    jaxdrop.random_bits(KEY, (4, 6), out_sharding=jax.NamedSharding(mixed, P(P.UNCONSTRAINED)))
