"""The mask stream as a public contract: `random_bits`, its documented formula, golden values,
blocks drawn alone, how `dropout` reads the bits, and exact thresholds for concrete rates."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import inverted_scale, threshold

import jaxdrop
from jaxdrop import _keys, _mask

# Golden values of mask stream version 2, recorded on jax 0.10.2. A change here is a change of
# the stream: deliberate, with a new version in docs/concepts/mask_stream.md and an entry in the
# CHANGELOG.
GOLDEN_BITS = [
  (
    lambda: jax.random.key(0),
    (2, 3),
    [0x84DDC0E4, 0xA4AE98E5, 0xF9392E22, 0x3804324F, 0x252ACDD2, 0x549516E6],
  ),
  (lambda: jax.random.key(1), (5,), [0x866B9675, 0x19F766D3, 0x93339081, 0xD20309E0, 0x42C33ED0]),
  (
    lambda: jax.random.PRNGKey(42),
    (2, 2, 2),
    [
      0xE871C729,
      0xD9972410,
      0xD4112815,
      0x1D2E87BC,
      0x370C2312,
      0xB6E79E5D,
      0xB60A62DE,
      0x2E587C8F,
    ],
  ),
  (lambda: jax.random.key(7, impl="rbg"), (4,), [0xE0A9748C, 0x1B18E02E, 0x6475187C, 0x05B47327]),
]
# The last 2 x 3 block of random_bits(key(3), (1000, 3000)).
GOLDEN_BLOCK = [0x43A00E2C, 0x60D4E814, 0x0D32933D, 0x0ED6B3F1, 0xE719EB75, 0xEC391800]
# dropout(key(0), ones(40), 0.5): units 0..31 kept (1) or dropped (0), unit 0 the top bit.
GOLDEN_DROPOUT_KEPT = 0xE79AFF67
# dropout(key(42), ones((4, 32)), 0.3, broadcast_dims=(0,)): the shared row's kept units.
GOLDEN_BROADCAST_KEPT = 0xEA3CFDCD


def _packed(kept) -> int:
  return int(np.packbits(np.asarray(kept, bool)).view(">u4")[0])


@pytest.mark.parametrize("make_key,shape,expected", GOLDEN_BITS)
def test_random_bits_golden_values(make_key, shape, expected):
  bits = jaxdrop.random_bits(make_key(), shape)
  assert bits.dtype == jnp.uint32 and bits.shape == shape
  assert [int(b) for b in bits.ravel()] == expected, [hex(int(b)) for b in bits.ravel()]


def test_dropout_golden_masks():
  y = jaxdrop.dropout(jax.random.key(0), jnp.ones(40), 0.5)
  assert _packed(y[:32] != 0) == GOLDEN_DROPOUT_KEPT, hex(_packed(y[:32] != 0))
  y = jaxdrop.dropout(jax.random.key(42), jnp.ones((4, 32)), 0.3, broadcast_dims=(0,))
  assert _packed(y[0] != 0) == GOLDEN_BROADCAST_KEPT, hex(_packed(y[0] != 0))


def test_block_drawn_alone_is_the_block_of_the_whole():
  key = jax.random.key(3)
  whole = jaxdrop.random_bits(key, (1000, 3000))
  source = _mask.MaskSource(_keys.mask_words(key), (jnp.uint32(998), jnp.uint32(2997)))
  block = _mask.mask_bits(source, _mask.MaskLayout((2, 3), global_shape=(1000, 3000)))
  np.testing.assert_array_equal(block, whole[998:, 2997:])
  assert [int(b) for b in block.ravel()] == GOLDEN_BLOCK


@pytest.mark.parametrize(
  "shape,start,size",
  [
    ((6, 5, 7), (2, 1, 3), (3, 4, 4)),
    ((4096,), (1000,), (77,)),
    ((3, 2**17), (1, 2**16 + 5), (2, 999)),
  ],
)
def test_any_block_drawn_alone(shape, start, size):
  key = jax.random.key(4)
  whole = jaxdrop.random_bits(key, shape)
  source = _mask.MaskSource(_keys.mask_words(key), tuple(jnp.uint32(s) for s in start))
  block = _mask.mask_bits(source, _mask.MaskLayout(size, global_shape=shape))
  np.testing.assert_array_equal(block, whole[tuple(slice(s, s + n) for s, n in zip(start, size))])


def _lowbias32(v):
  v = v ^ (v >> np.uint32(16))
  v = v * np.uint32(0x7FEB352D)
  v = v ^ (v >> np.uint32(15))
  v = v * np.uint32(0x846CA68B)
  return v ^ (v >> np.uint32(16))


@pytest.mark.parametrize("shape", [(3, 5, 7), (11,), (2, 1, 4)])
def test_random_bits_follow_the_documented_formula(shape):
  # The docstring's formula in NumPy, with JAX's Threefry primitive for the row keys.
  key = jax.random.key(5)
  words = np.asarray(_keys.mask_words(key))
  rows, width = int(np.prod(shape[:-1])), shape[-1]
  s0, s1 = (
    np.asarray(w)[:, None]
    for w in _keys.threefry2x32(
      words[0], words[1], np.arange(rows, dtype=np.uint32), np.zeros(rows, np.uint32)
    )
  )
  with np.errstate(over="ignore"):
    w = np.arange(width, dtype=np.uint32)[None, :] * np.uint32(0x9E3779B9)
    expected = _lowbias32((s0 + w) ^ s1) ^ w ^ np.uint32(0x80000000)
  np.testing.assert_array_equal(jaxdrop.random_bits(key, shape), expected.reshape(shape))


def test_random_bits_is_jittable_vmappable_and_key_specific():
  keys = jax.random.split(jax.random.key(6), 3)
  batched = jax.vmap(lambda k: jaxdrop.random_bits(k, (4, 8)))(keys)
  for i in range(3):
    np.testing.assert_array_equal(batched[i], jaxdrop.random_bits(keys[i], (4, 8)))
  assert not np.array_equal(batched[0], batched[1])
  np.testing.assert_array_equal(
    jax.jit(jaxdrop.random_bits, static_argnums=1)(keys[0], (4, 8)), batched[0]
  )
  # Distinct from jax.random's stream of the same key (domain separation).
  assert not np.array_equal(jaxdrop.random_bits(keys[0], (64,)), jax.random.bits(keys[0], (64,)))


def test_random_bits_shapes_and_errors():
  key = jax.random.key(0)
  assert jaxdrop.random_bits(key, ()).shape == ()
  assert jaxdrop.random_bits(key, (0, 3)).shape == (0, 3)
  assert int(jaxdrop.random_bits(key, ())) == int(jaxdrop.random_bits(key, (1,))[0])
  with pytest.raises(TypeError, match="key must be a PRNG key"):
    jaxdrop.random_bits(jnp.ones(3), (2,))
  with pytest.raises(TypeError, match="shape must be a sequence of integers"):
    jaxdrop.random_bits(key, (2.5,))
  with pytest.raises(ValueError, match="non-negative"):
    jaxdrop.random_bits(key, (-1, 2))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("broadcast_dims", [(), (0,)])
def test_dropout_keeps_exactly_where_the_bits_pass_thethreshold(rate, broadcast_dims):
  key, shape = jax.random.key(8), (64, 96)
  mask_shape = (1, 96) if broadcast_dims else shape
  expected = jaxdrop.random_bits(key, mask_shape) >= np.uint32(threshold(rate))
  y = jaxdrop.dropout(key, jnp.ones(shape), rate, broadcast_dims=broadcast_dims)
  np.testing.assert_array_equal(y != 0, jnp.broadcast_to(expected, shape))
  np.testing.assert_array_equal(jaxdrop.make_mask(key, mask_shape, rate).keep, expected)


@pytest.mark.parametrize("rate", [1e-46, 1e-10, 0.3, 1 - 1e-7, 1 - 1e-8])
def test_concrete_rates_get_exact_thresholds(rate):
  # Converted in float64 on the host: in float32, 1 - 1e-8 is 1 (every unit dropped) and
  # 1 - 1e-7 has keep 2**-23 (a scale of 8388608 instead of about 1e7).
  t = threshold(rate)
  realised = _mask.drop_threshold(rate)
  assert int(realised.t) == t and bool(realised.any_kept)
  keep = (2**32 - t) / 2**32
  assert float(realised.keep) == np.float32(keep) and float(realised.drop) == np.float32(t / 2**32)
  scale = inverted_scale(rate)
  assert float(realised.inverse_keep) == scale
  np.testing.assert_allclose(scale, 2**32 / (2**32 - t), rtol=2**-23)  # within 1 ulp of exact
  # The realised rate is within 2**-33 of the rate, except where the clamp to t >= 1 applies.
  assert abs(t / 2**32 - rate) <= 2**-33 or t == 1
  assert float(jaxdrop.make_mask(jax.random.key(0), (4,), rate).scale) == scale
  y = jaxdrop.dropout(jax.random.key(0), jnp.ones(4096), rate)
  assert set(np.unique(np.asarray(y)).tolist()) <= {0.0, float(scale)}
  with jax.enable_x64(True):
    assert float(_mask.drop_threshold(rate, jnp.float64).keep) == keep


def test_make_mask_scale_just_below_rate_one():
  assert float(jaxdrop.make_mask(jax.random.key(0), (4,), 1 - 1e-7).scale) == pytest.approx(
    2**32 / 429
  )


@pytest.mark.parametrize("rate", [np.float32(0.3), np.float32(1 - 1e-7), 0.1])
def test_traced_rates_use_the_float32_value(rate):
  # Traced, a rate is the float32 value it arrives as: exact for that value.
  value = float(np.float32(rate))
  traced = jax.jit(lambda r: _mask.drop_threshold(r))(rate)
  assert int(traced.t) == threshold(value)
  assert float(traced.keep) == np.float32((2**32 - threshold(value)) / 2**32)
  y = jax.jit(lambda r: jaxdrop.dropout(jax.random.key(1), jnp.ones(1024), r))(rate)
  np.testing.assert_array_equal(
    y, jaxdrop.dropout(jax.random.key(1), jnp.ones(1024), np.float32(rate))
  )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_traced_thresholds_round_as_numpy_does(dtype):
  # The traced threshold rounds with `floor` (Pallas' Triton lowering has no `round`): it must
  # equal np.round (half to even) on 10**6 random values of rate * 2**32 and on every half
  # integer, power of two and their neighbours up to 2**33.
  bits = np.uint32 if dtype == np.float32 else np.uint64
  top = np.array(2.0**33, dtype).view(bits)
  v = np.random.default_rng(0).integers(0, top, 10**6, dtype=bits).view(dtype)
  edges = np.concatenate(
    [
      np.arange(0, 64, 0.5),
      2.0 ** np.arange(34),
      2.0 ** np.arange(34) - 0.5,
      2.0 ** np.arange(34) + 0.5,
    ]
  ).astype(dtype)
  v = np.concatenate([v, edges, np.nextafter(edges, dtype(0)), np.nextafter(edges, dtype(2**34))])
  with jax.enable_x64(dtype == np.float64):
    got = np.asarray(jax.jit(_mask.round_half_even)(v))
  assert got.dtype == dtype
  bad = got != np.round(v)
  assert not bad.any(), (v[bad][:5], got[bad][:5])


def test_traced_rate_resolution_near_one():
  # float32 cannot hold 1 - 1e-8: traced, it is 1 and drops every unit (as
  # docs/concepts/mask_stream.md says).
  y = jax.jit(lambda r: jaxdrop.dropout(jax.random.key(1), jnp.ones(64), r))(1 - 1e-8)
  assert not bool(jnp.any(y))


def test_gaussian_dropout_concrete_rate_near_one_is_not_rounded_to_one():
  # sigma = sqrt(rate / (1 - rate)) = 1e4 at rate 1 - 1e-8; in float32 the rate would be 1 (zeros).
  y = jaxdrop.gaussian_dropout(jax.random.key(2), jnp.ones(2**16), 1 - 1e-8)
  std = float(jnp.std(y))
  assert 0.97e4 < std < 1.03e4, std


def test_docs_name_the_stream_version():
  page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "concepts" / "mask_stream.md"
  assert f"# The mask stream (version {_mask.STREAM_VERSION})" in page.read_text()
  assert f"mask stream version {_mask.STREAM_VERSION}" in jaxdrop.random_bits.__doc__
