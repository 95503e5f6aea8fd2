"""Fixtures of the model tests."""

import copy

import pytest


@pytest.fixture()
def model64(tiny):
    """The tiny model in float64: decodes that should agree then differ only by summation order."""
    model, vocab = tiny
    return copy.deepcopy(model).double(), vocab
