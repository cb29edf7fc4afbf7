"""Strict JAX settings for the whole suite: rank promotion raises, so a silent broadcast is a bug."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
  return jax.random.key(0)
