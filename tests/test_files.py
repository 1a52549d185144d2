"""Tests for nas_jax.files."""

import json
import math

import numpy as np

from nas_jax import files

# jsonable


def test_jsonable_makes_numpy_values_plain_and_drops_private_keys():
  """NaN (any float type) -> None, NumPy ints/bools -> Python, tuples and
  arrays -> lists, keys starting with "_" dropped, at any depth."""
  out = files.jsonable({
      "nan32": np.float32("nan"), "inf": math.inf, "f32": np.float32(0.5),
      "i64": np.int64(7), "flag": np.bool_(True), "pair": (1, np.int32(2)),
      "array": np.array([[1.0, np.nan]]), "_working": np.zeros(3),
      "nested": {"_hidden": 1, "kept": [np.float64(1.25)]}, 3: "int key"})
  assert out == {"nan32": None, "inf": None, "f32": 0.5, "i64": 7,
                 "flag": True, "pair": [1, 2], "array": [[1.0, None]],
                 "nested": {"kept": [1.25]}, "3": "int key"}
  assert type(out["i64"]) is int and type(out["f32"]) is float
  assert type(out["flag"]) is bool
  assert type(out["pair"][1]) is int
  # Plain JSON, even with NaN forbidden.
  json.dumps(out, allow_nan=False)
