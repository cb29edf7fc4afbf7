"""jax.export with symbolic sizes, as a model is exported for serving: every public function and
both Flax attention drop-ins export with a symbolic batch and (where they have one) a symbolic
sequence or spatial size; the serialized artifact reloads and, called at two sizes, equals the
direct call under jit: the same mask, the same values and the same gradient.

Flax and Equinox dropout export the same way; Flax's own attention is the control for the
drop-ins (they must export wherever it does)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import MEMBERS, observed_mask
from jax import export

import jaxdrop
import jaxdrop.linen
import jaxdrop.nnx

KEY = jax.random.key(0)
RATE = 0.3


def reloaded(f, *args, vjp_order=0):
  """`f` exported for `args` (arrays or ShapeDtypeStructs), serialized (with its derivative
  to `vjp_order`) and deserialized."""
  return export.deserialize(export.export(jax.jit(f))(*args).serialize(vjp_order=vjp_order))


def symbolic(*specs, constraints=()):
  """ShapeDtypeStructs of shapes such as "b, t, 8" (float32, or `(spec, dtype)`), their
  symbols shared (one scope) and bound by `constraints`."""
  scope = export.SymbolicScope(constraints)
  specs = [spec if isinstance(spec, tuple) else (spec, jnp.float32) for spec in specs]
  structs = [jax.ShapeDtypeStruct(export.symbolic_shape(s, scope=scope), d) for s, d in specs]
  return structs[0] if len(structs) == 1 else structs


def assert_same_call(artifact, f, args, *, exact=False, grad=True, grad_zeros=True):
  """The reloaded artifact against `jax.jit(f)` on concrete `args`: outputs with the same exact
  zeros (the mask) and values; the gradient with respect to every floating argument with
  the same values and, with `grad_zeros`, zeros (the mask for a member; for attention a
  one-key row's gradient is 0 or rounding). `exact`: bit for bit."""
  y, expected = artifact.call(*args), jax.jit(f)(*args)
  np.testing.assert_array_equal(y == 0, expected == 0)
  tolerance = {} if not exact else {"rtol": 0, "atol": 0}
  np.testing.assert_allclose(y, expected, **({"rtol": 1e-6, "atol": 1e-6} | tolerance))
  if not grad:
    return
  argnums = tuple(i for i, a in enumerate(args) if jnp.issubdtype(a.dtype, jnp.floating))
  cotangent = jax.random.normal(jax.random.key(7), y.shape, y.dtype)
  loss = lambda fn: lambda *a: jnp.sum(cotangent * fn(*a))
  grads = jax.grad(loss(artifact.call), argnums)(*args)
  expected_grads = jax.jit(jax.grad(loss(f), argnums))(*args)
  for g, e in zip(grads, expected_grads):
    if grad_zeros or exact:
      np.testing.assert_array_equal(g == 0, e == 0)
    np.testing.assert_allclose(g, e, **({"rtol": 1e-5, "atol": 1e-6} | tolerance))


# The members as f(key, x) on NHWC arrays: a symbolic batch and a symbolic sequence (or spatial)
# axis, called at two sizes of each.
SEQUENCE = ("b, t, 6, 3", (), [(1, 5, 6, 3), (3, 8, 6, 3)])
# DropBlock's block must fit its spatial axes: the constraints say so (see the test below).
SPATIAL = ("b, h, w, 3", ("h >= 3", "w >= 3"), [(1, 6, 9, 3), (3, 11, 7, 3)])
MEMBER_EXPORTS = {
  **{name: (lambda m: lambda k, x: m(k, x, RATE))(member) for name, member in MEMBERS.items()},
  "gaussian_noise": lambda k, x: jaxdrop.gaussian_noise(k, x, RATE),
  "zoneout": lambda k, x: jaxdrop.zoneout(k, -x, x, RATE),
  "stochastic_depth": lambda k, x: jaxdrop.stochastic_depth(k, RATE, jnp.tanh, x),
  "drop_block coupled, with noise": lambda k, x: jaxdrop.drop_block(
    k, x, RATE, 3, couple_channels=True, with_noise=True
  ),
  "make_mask and apply_mask": lambda k, x: jaxdrop.apply_mask(
    jaxdrop.make_mask(k, (x.shape[0], 1, x.shape[2], x.shape[3]), RATE), x
  ),
  "concrete_dropout": lambda k, x: jaxdrop.concrete_dropout(k, x, RATE),
  "concrete_dropout per channel, spatial": lambda k, x: jaxdrop.concrete_dropout(
    k, x, jnp.full((3,), RATE), broadcast_dims=(1, 2)
  ),
  "concrete_dropout_regularizer": lambda k, x: jaxdrop.concrete_dropout_regularizer(
    RATE, x, input_dim=6, weight_regularizer=1e-3, dropout_regularizer=1e-2
  ),
  "variational_dropout": lambda k, x: jaxdrop.variational_dropout(k, x, jnp.full((3,), -1.0)),
  "variational_dropout_kl": lambda k, x: jaxdrop.variational_dropout_kl(x),
  "variational_dense": lambda k, x: jaxdrop.variational_dense(
    k, x, jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), -1.0
  ),
  "mc_dropout": lambda k, x: (
    jaxdrop.mc_dropout(
      lambda k, x: jnp.tanh(jaxdrop.dropout(k, x, RATE)), k, 3, x, return_samples=False
    ).mean
  ),
}
# The gradient of the reloaded artifact for the members with derivative code of their own
# (the rest share dropout's one backward rule); each costs an export of the derivative and two
# more compilations.
WITH_GRADIENT = (
  "dropout",
  "drop_block",
  "zoneout",
  "stochastic_depth",
  "make_mask and apply_mask",
  "concrete_dropout per channel, spatial",
  "variational_dense",
)


def test_every_public_function_is_exported_here():
  functions = {n for n in jaxdrop.__all__ if callable(getattr(jaxdrop, n))} - {
    "DropoutMask",
    "MCResult",
  }
  covered = {name.split(" ")[0] for name in MEMBER_EXPORTS} | {"make_mask", "apply_mask"}
  covered |= {"random_bits", "dot_product_attention"}  # tests of their own below
  assert functions <= covered, functions - covered


@pytest.mark.parametrize("name", MEMBER_EXPORTS)
def test_member_exports_with_symbolic_sizes_and_equals_the_direct_call(name):
  f = MEMBER_EXPORTS[name]
  spec, constraints, shapes = SPATIAL if name.startswith("drop_block") else SEQUENCE
  grad = name in WITH_GRADIENT
  artifact = reloaded(f, KEY, symbolic(spec, constraints=constraints), vjp_order=int(grad))
  for i, shape in enumerate(shapes):
    x = jax.random.normal(jax.random.key(i), shape)
    # Against the concrete call under jit: the same mask (the pattern of exact zeros) and the
    # same values up to the rounding of XLA's fusion choices (alpha's affine map, DropBlock's
    # scale), as in tests/multidevice; dropout's values are bit-identical (below). The
    # gradient at the second size.
    assert_same_call(artifact, f, (KEY, x), grad=grad and i == 1)


def test_random_bits_of_a_symbolic_shape_are_the_concrete_bits():
  f = lambda k, x: jaxdrop.random_bits(k, x.shape)
  artifact = reloaded(f, KEY, symbolic("b, t"))
  for shape in ((1, 1000), (5, 37)):
    x = jnp.zeros(shape)
    np.testing.assert_array_equal(artifact.call(KEY, x), jaxdrop.random_bits(KEY, shape))
  dropout = reloaded(lambda k, x: jaxdrop.dropout(k, x, 0.5), KEY, symbolic("b, 1000"))
  x = jax.random.normal(jax.random.key(1), (5, 1000))
  y = dropout.call(KEY, x)
  np.testing.assert_array_equal(y, jaxdrop.dropout(KEY, x, 0.5))
  np.testing.assert_array_equal(y != 0, jaxdrop.random_bits(KEY, (5, 1000)) >= np.uint32(2**31))


class TestDropBlock:
  def test_a_block_that_may_not_fit_a_symbolic_size_is_a_clear_error(self):
    f = lambda k, x: jaxdrop.drop_block(k, x, RATE, 3)
    with pytest.raises(ValueError, match=r"constraints=\('h >= 3',\)"):
      export.export(jax.jit(f))(KEY, symbolic("b, h, w, 3"))
    with pytest.raises(ValueError, match=r"constraints=\('w >= 3',\)"):
      export.export(jax.jit(f))(KEY, symbolic("b, h, w, 3", constraints=("h >= 3",)))
    with pytest.raises(ValueError, match=r"smallest spatial size min\(h, 2\)"):
      export.export(jax.jit(f))(KEY, symbolic("b, h, 2, 3"))
    # A block of 1 fits any size.
    one = lambda k, x: jaxdrop.drop_block(k, x, RATE, 1, spatial_axes=(0, 1))
    export.export(jax.jit(one))(KEY, symbolic("h, w"))

  def test_the_artifact_refuses_a_map_smaller_than_its_constraint(self):
    f = lambda k, x: jaxdrop.drop_block(k, x, RATE, 3)
    artifact = reloaded(f, KEY, symbolic("b, h, w, 3", constraints=("h >= 3", "w >= 3")))
    with pytest.raises(ValueError):  # JAX's shape check (after deserializing: "refining shapes")
      artifact.call(KEY, jnp.ones((1, 2, 5, 3)))

  def test_one_artifact_draws_the_concrete_mask_at_many_sizes(self):
    # The seed rate is solved from the traced sizes: the same operations at every size, so
    # the same mask for the smallest and long maps, one axis or three (two: the member test
    # above; the scale up to the rounding of exp where XLA folds the concrete call's coverage
    # into constants).
    for spec, constraints, shapes, block in [
      ("b, l", ("l >= 5",), [(3, 5), (1, 1001)], 5),
      ("d, h, w", ("d >= 2", "h >= 2", "w >= 2"), [(2, 2, 2), (7, 3, 9)], 2),
    ]:
      axes = (1,) if spec == "b, l" else (0, 1, 2)
      f = lambda k, x: jaxdrop.drop_block(k, x, 0.2, block, spatial_axes=axes)  # noqa: B023
      artifact = reloaded(f, KEY, symbolic(spec, constraints=constraints))
      for shape in shapes:
        x = jnp.ones(shape)
        y, expected = artifact.call(KEY, x), jax.jit(f)(KEY, x)
        np.testing.assert_array_equal(y == 0, expected == 0, err_msg=shape)
        np.testing.assert_allclose(y, expected, rtol=1e-6, err_msg=shape)


def _attention_args(batch, t, s, *, heads=4, heads_k=2, h=8, bias=False, mask=False):
  keys = jax.random.split(jax.random.key(t * 100 + s), 5)
  args = [
    jax.random.normal(keys[0], (batch, t, heads, h)),
    jax.random.normal(keys[1], (batch, s, heads_k, h)),
    jax.random.normal(keys[2], (batch, s, heads_k, h)),
  ]
  if bias:
    args.append(jax.random.normal(keys[3], (batch, 1, t, s)))
  if mask:
    args.append(jax.random.bernoulli(keys[4], 0.8, (1, 1, t, s)))
  return tuple(args)


def _attention_specs(*, heads=4, heads_k=2, h=8, bias=False, mask=False):
  specs = [f"b, t, {heads}, {h}", f"b, s, {heads_k}, {h}", f"b, s, {heads_k}, {h}"]
  specs += ["b, 1, t, s"] * bias + [("1, 1, t, s", jnp.bool_)] * mask
  return symbolic(*specs)


ATTENTION_OPTIONS = {
  "causal, lengths": {"is_causal": True, "lengths": True},
  "bias and mask": {"bias": True, "mask": True},
}


def _attention(implementation, *, lengths=False, bias=False, mask=False, **kwargs):
  """`dot_product_attention` as f(q, k, v[, bias][, mask]), chunks of 8, lengths from T and S."""

  def f(q, k, v, *rest):
    extra = dict(zip([n for n, given in (("bias", bias), ("mask", mask)) if given], rest))
    if lengths:
      b = q.shape[0]
      extra["query_seq_lengths"] = jnp.full((b,), q.shape[1] - 1, jnp.int32)
      extra["key_value_seq_lengths"] = jnp.maximum(jnp.arange(b) + k.shape[1] - 2, 1)
    return jaxdrop.dot_product_attention(
      q,
      k,
      v,
      dropout_key=KEY,
      dropout_rate=RATE,
      implementation=implementation,
      query_chunk_size=8,
      key_chunk_size=8,
      **extra,
      **kwargs,
    )

  return f


@pytest.mark.parametrize(
  "implementation,options",
  [("chunked", "causal, lengths"), ("chunked", "bias and mask"), ("xla", "causal, lengths")],
)
def test_attention_exports_with_symbolic_batch_and_lengths(implementation, options):
  """T and S are different symbols; chunks of 8 make several blocks and padding at the
  second size (where the gradient is compared too). Against the direct call, bit for bit
  for chunked. (The default implementation is one of these: the test after the next.)"""
  options = ATTENTION_OPTIONS[options]
  arrays = {name: options.get(name, False) for name in ("bias", "mask")}
  f = _attention(implementation, **options)
  artifact = reloaded(f, *_attention_specs(**arrays), vjp_order=1)
  for i, size in enumerate(((1, 5, 7), (3, 20, 13))):
    args = _attention_args(*size, **arrays)
    exact = implementation == "chunked"
    assert_same_call(artifact, f, args, exact=exact, grad=i == 1, grad_zeros=False)


def test_attention_mask_of_the_exported_call_is_dropouts_mask():
  """With the identity as values (head size S) the output is the dropped weights themselves:
  its zeros are `jaxdrop.dropout`'s mask on the (B, N, T, S) weights, drawn at the served size."""
  # Chunked (xla calls dropout itself), with a mask shared over batch and heads: the rows and
  # columns of each block's mask come from symbolic offsets. (Its unshared mask is the direct
  # call's, bit for bit, above.)
  for implementation, dims in (("chunked", (0, 1)),):
    f = lambda q, k, v: jaxdrop.dot_product_attention(  # noqa: B023
      q,
      k,
      v,
      dropout_key=KEY,
      dropout_rate=0.5,
      broadcast_dims=dims,  # noqa: B023
      implementation=implementation,  # noqa: B023
      scale=1.0,  # the head size is symbolic here
      query_chunk_size=4,
      key_chunk_size=4,
    )
    artifact = reloaded(f, *symbolic("b, t, 1, s", "b, s, 1, s", "b, s, 1, s"))
    for b, t, s in ((1, 3, 5), (2, 9, 6)):
      q = 0.1 * jax.random.normal(jax.random.key(t), (b, t, 1, s))
      identity = jnp.broadcast_to(jnp.eye(s)[None, :, None, :], (b, s, 1, s))
      out = artifact.call(q, identity, identity)
      kept = observed_mask(KEY, (b, 1, t, s), 0.5, broadcast_dims=dims)
      np.testing.assert_array_equal(jnp.moveaxis(out, 2, 1) != 0, kept)


def test_a_symbolic_head_size_needs_a_scale():
  f = lambda q, k, v: jaxdrop.dot_product_attention(q, k, v)
  with pytest.raises(ValueError, match="scale must be given when the head size is symbolic"):
    export.export(jax.jit(f))(*symbolic("b, t, 2, h", "b, t, 2, h", "b, t, 2, h"))
  g = lambda q, k, v: jaxdrop.dot_product_attention(q, k, v, scale=0.5)
  export.export(jax.jit(g))(*symbolic("b, t, 2, h", "b, t, 2, h", "b, t, 2, h"))


@pytest.mark.parametrize(
  "spec_q,spec_k,picked",
  [
    ("b, t, 4, 8", "b, s, 2, 8", "chunked"),  # a symbolic length: chunked, whatever the size
    ("b, 20, 4, 8", "b, s, 2, 8", "chunked"),
    ("b, t, 4, 8", "b, 13, 2, 8", "chunked"),
    ("b, 20, 4, 8", "b, 13, 2, 8", "xla"),  # a symbolic batch alone counts as 1
    ("b, 2048, 4, 8", "b, 4096, 2, 8", "chunked"),  # one example's weights exceed 2**24
    ("b, 2048, 4, 8", "b, 1024, 2, 8", "xla"),  # one example's do not
  ],
)
def test_the_default_rule_decides_without_comparing_symbolic_sizes(spec_q, spec_k, picked):
  f = lambda impl: (
    lambda q, k, v: jaxdrop.dot_product_attention(
      q, k, v, dropout_key=KEY, dropout_rate=RATE, implementation=impl
    )
  )
  specs = symbolic(spec_q, spec_k, spec_k)

  # The exported program is the picked implementation's, op for op (source locations aside).
  def program(impl):
    text = export.export(jax.jit(f(impl)))(*specs).mlir_module()
    return [line for line in text.splitlines() if not line.startswith("#loc")]

  assert program(None) == program(picked)


def _data(a):
  """An array, or a key array's data (keys compare by their words)."""
  return jax.random.key_data(a) if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key) else a


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_nnx_attention_fn_exports_where_flax_attention_does(train):
  for attention_fn in (nnx.dot_product_attention, jaxdrop.nnx.attention_fn):
    layer = nnx.MultiHeadAttention(
      num_heads=4,
      in_features=16,
      dropout_rate=0.1,
      attention_fn=attention_fn,
      decode=False,
      rngs=nnx.Rngs(0),
    )
    layer.train() if train else layer.eval()
    graph, state = nnx.split(layer)

    def f(pure, x):
      # The state as a plain dict in and out (an artifact's pytrees hold no nnx.Variable); in
      # training the advanced RNG count comes back with it.
      state_now = jax.tree.map(lambda v: v, state)  # noqa: B023
      nnx.replace_by_pure_dict(state_now, pure)
      model = nnx.merge(graph, state_now)  # noqa: B023
      return model(x), nnx.to_pure_dict(nnx.state(model))

    pure = nnx.to_pure_dict(state)
    artifact = reloaded(f, pure, symbolic("b, t, 16"))
    if attention_fn is nnx.dot_product_attention:
      continue  # the control: Flax's own attention exports here
    for shape in ((1, 5, 16), (3, 12, 16)):
      x = jax.random.normal(jax.random.key(shape[1]), shape)
      (y, new_state), (expected, expected_state) = artifact.call(pure, x), jax.jit(f)(pure, x)
      np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
      jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(_data(a), _data(b)), new_state, expected_state
      )


@pytest.mark.parametrize("deterministic", [True, False], ids=["eval", "train"])
def test_linen_attention_fn_exports_where_flax_attention_does(deterministic):
  x_spec = symbolic("b, t, 16")
  for attention_fn in (nn.dot_product_attention, jaxdrop.linen.attention_fn):
    layer = nn.MultiHeadDotProductAttention(
      num_heads=4, dropout_rate=0.1, attention_fn=attention_fn
    )
    params = layer.init(jax.random.key(0), jnp.ones((1, 4, 16)), deterministic=True)

    def f(params, key, x):
      return layer.apply(params, x, deterministic=deterministic, rngs={"dropout": key})  # noqa: B023

    artifact = reloaded(f, params, KEY, x_spec)
    if attention_fn is nn.dot_product_attention:
      continue  # the control: Flax's own attention exports here
    for shape in ((1, 5, 16), (3, 12, 16)):
      x = jax.random.normal(jax.random.key(shape[1]), shape)
      y, expected = artifact.call(params, KEY, x), jax.jit(f)(params, KEY, x)
      np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
