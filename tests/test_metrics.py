"""Tests for nas_jax.metrics: the run's JSON-lines logs and TensorBoard."""

import json
import math
import os
import struct

import numpy as np
import pytest

from nas_jax import files
from nas_jax import metrics


def _read_lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _tensorboard_scalars(directory):
  """``{tag: [(step, value)]}`` from the event files in ``directory`` (the
  TFRecord framing: length, its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      blob = f.read()
    pos = 0
    while pos < len(blob):
      (length,) = struct.unpack("<Q", blob[pos:pos + 8])
      event = event_pb2.Event.FromString(blob[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(
            (event.step, pytest.approx(value.simple_value)))
  return out


def _read_bytes(workdir):
  out = {}
  for name in files.LOG_FILES:
    with open(os.path.join(workdir, name), "rb") as f:
      out[name] = f.read()
  return out


@pytest.fixture(name="writer")
def _writer(tmp_path):
  writer = metrics.RunWriter(str(tmp_path))
  writer.truncate({})
  yield writer
  writer.close()


def _write_some(writer, step):
  """One record in each log file."""
  writer.metrics(step, 0, {"train/loss": 1.5 + step})
  writer.archs(step, 0, np.array([[0, 1, 2, 3]]), np.array([0.5]),
               np.array([np.log(120.0)]))
  writer.derived(0, np.array([[0, 1], [2, 3]]), np.array([100.0, 90.0]), 1)


def test_truncate_creates_the_log_files(tmp_path, writer):
  """A new run starts with all three (empty) JSON-lines files."""
  for name in files.LOG_FILES:
    assert os.path.getsize(tmp_path / name) == 0
  assert writer.offsets() == {name: 0 for name in files.LOG_FILES}


def test_metrics_writes_one_json_line_per_call(tmp_path, writer):
  """Each metrics() call appends a record with epoch, counter, values, time."""
  writer.metrics(10, 0, {"train/loss": np.float32(2.5), "train/lr": 20})
  writer.metrics(3, 1, {"ctrl/reward": 0.25}, counter="ctrl_step")
  writer.flush()
  first, second = _read_lines(tmp_path / "metrics.jsonl")
  assert first["epoch"] == 0 and first["shared_step"] == 10
  assert first["train/loss"] == 2.5 and first["train/lr"] == 20.0
  assert isinstance(first["time"], float)
  assert second["ctrl_step"] == 3 and "shared_step" not in second
  assert second["ctrl/reward"] == 0.25
  assert writer.last_values == {"train/loss": 2.5, "train/lr": 20.0,
                                "ctrl/reward": 0.25}


def test_non_finite_values_become_null(tmp_path, writer):
  """NaN and inf are written as JSON null in every log, never as NaN."""
  writer.metrics(1, 0, {"a": float("nan"), "b": float("inf"), "c": 1.0})
  writer.archs(1, 0, np.array([[0, 1], [1, 0]]),
               np.array([np.nan, 0.5]), np.array([np.inf, np.log(80.0)]))
  writer.derived(0, np.array([[0, 1], [1, 0]]),
                 np.array([-np.inf, 70.0]), 1)
  writer.flush()
  for name in files.LOG_FILES:
    text = (tmp_path / name).read_text()
    assert "NaN" not in text and "Infinity" not in text
  (record,) = _read_lines(tmp_path / "metrics.jsonl")
  assert record["a"] is None and record["b"] is None and record["c"] == 1.0
  bad, good = _read_lines(tmp_path / "archs.jsonl")
  assert bad == {"ctrl_step": 1, "epoch": 0, "tokens": [0, 1],
                 "reward": None, "log_ppl": None, "ppl": None}
  assert good["reward"] == 0.5 and good["ppl"] == pytest.approx(80.0)
  (derived,) = _read_lines(tmp_path / "derived.jsonl")
  assert derived == {"epoch": 0, "best": 1, "cells": [[0, 1], [1, 0]],
                     "ppl": [None, 70.0]}


def test_archs_writes_one_line_per_cell(tmp_path, writer):
  """archs() writes one record per sampled cell, with its tokens."""
  cells = np.arange(12, dtype=np.int32).reshape(3, 4)
  writer.archs(5, 2, cells, np.array([0.1, 0.2, 0.3]),
               np.log(np.array([10.0, 20.0, 30.0])))
  writer.flush()
  records = _read_lines(tmp_path / "archs.jsonl")
  assert [r["tokens"] for r in records] == cells.tolist()
  assert [r["ppl"] for r in records] == pytest.approx([10.0, 20.0, 30.0])
  assert [r["log_ppl"] for r in records] == pytest.approx(
      np.log([10.0, 20.0, 30.0]).tolist())
  assert all(r["ctrl_step"] == 5 and r["epoch"] == 2 for r in records)


def test_offsets_and_truncate_restore_recorded_sizes(tmp_path, writer):
  """Truncating to recorded offsets gives back the files as they were then."""
  _write_some(writer, 1)
  writer.flush()
  offsets = writer.offsets()
  snapshot = _read_bytes(tmp_path)
  assert all(offsets[name] == len(snapshot[name]) > 0 for name in snapshot)
  _write_some(writer, 2)
  _write_some(writer, 3)
  writer.flush()
  assert all(len(b) > len(snapshot[n])
             for n, b in _read_bytes(tmp_path).items())
  writer.close()

  resumed = metrics.RunWriter(str(tmp_path))
  resumed.truncate(offsets)
  try:
    assert _read_bytes(tmp_path) == snapshot
    assert resumed.offsets() == offsets
    # Appending after the truncation continues the files cleanly.
    _write_some(resumed, 4)
    resumed.flush()
    lines = _read_lines(tmp_path / "metrics.jsonl")
    assert [r["shared_step"] for r in lines] == [1, 4]
  finally:
    resumed.close()


def test_truncate_with_missing_offsets_empties_files(tmp_path, writer):
  """A log without a recorded offset is cut to zero bytes."""
  _write_some(writer, 1)
  writer.flush()
  offsets = writer.offsets()
  del offsets["archs.jsonl"]
  writer.close()
  resumed = metrics.RunWriter(str(tmp_path))
  resumed.truncate(offsets)
  resumed.close()
  assert os.path.getsize(tmp_path / "archs.jsonl") == 0
  assert os.path.getsize(tmp_path / "metrics.jsonl") == offsets[
      "metrics.jsonl"]


def test_best_arch_writes_json_atomically(tmp_path, writer):
  """best_arch.json holds the record and no temporary file is left behind."""
  writer.best_arch({"arch": "old", "valid_ppl": 100.0})
  record = {"arch": "x", "tokens": [0, 1, 2], "valid_ppl": 81.5,
            "test_ppl": 78.25}
  writer.best_arch(record)
  path = tmp_path / files.BEST_ARCH_FILE
  assert json.loads(path.read_text()) == record
  assert sorted(p.name for p in tmp_path.glob("best_arch*")) == [
      files.BEST_ARCH_FILE]


@pytest.mark.parametrize("key, expected", [
    ("time", True),
    ("train/steps_per_s", True),
    ("ctrl/steps_per_s", True),
    ("derive/seconds", True),
    ("train/loss", False),
    ("train/ppl", False),
    ("valid/ppl", False),
    ("epoch", False),
])
def test_is_timing(key, expected):
  """Only wall-clock keys are classed as timing."""
  assert metrics.is_timing(key) is expected


def test_window_means_and_count():
  """pop() returns per-key means and n, then starts a new window."""
  window = metrics.Window()
  window.add(loss=1.0, lr=20.0)
  window.add(loss=2.0, lr=20.0)
  window.add(loss=6.0, lr=10.0)
  means = window.pop()
  assert means["n"] == 3
  assert math.isclose(means["loss"], 3.0)
  assert math.isclose(means["lr"], 50.0 / 3)
  window.add(loss=5.0)
  assert window.pop() == {"loss": 5.0, "n": 1}


def test_metrics_write_tensorboard_events(tmp_path, writer):
  """metrics() also logs to TensorBoard: an events file appears in tb/."""
  writer.metrics(1, 0, {"train/loss": 2.0, "train/ppl": math.exp(2.0)})
  writer.flush()
  tb_dir = tmp_path / "tb"
  events = [p for p in tb_dir.iterdir() if p.name.startswith("events.out")]
  assert len(events) == 1
  assert events[0].stat().st_size > 0
  assert b"train/loss" in events[0].read_bytes()


def test_a_cell_whose_ppl_overflows_float32_logs_finite_values(tmp_path,
                                                               writer):
  """log ppl 95 overflows exp in float32 (the controller step's ppl): the
  log keeps the finite log ppl and a float64 ppl, never null or inf."""
  with np.errstate(over="ignore"):
    assert not np.isfinite(np.exp(np.float32(95.0)))
  writer.archs(1, 1, np.array([[0, 1]]), np.array([0.0]),
               np.array([95.0], np.float32))
  writer.flush()
  (record,) = _read_lines(tmp_path / "archs.jsonl")
  assert record["log_ppl"] == 95.0
  assert record["ppl"] == pytest.approx(math.exp(95.0))


def test_exp_or_inf():
  """exp in float64; inf past its range instead of OverflowError."""
  assert metrics.exp_or_inf(1.0) == pytest.approx(math.e)
  assert metrics.exp_or_inf(800.0) == math.inf
  assert math.isnan(metrics.exp_or_inf(math.nan))


def test_non_finite_values_stay_out_of_tensorboard(tmp_path, writer):
  """TensorBoard gets only finite scalars (tensorboardX warns on the rest)."""
  writer.metrics(1, 1, {"a": float("nan"), "b": 2.0})
  writer.metrics(2, 1, {"a": 3.0, "b": float("inf")})
  writer.close()
  assert _tensorboard_scalars(str(tmp_path / files.TENSORBOARD_DIR)) == {
      "a": [(2, 3.0)], "b": [(1, 2.0)]}


def test_truncate_restores_the_latest_values(tmp_path, writer):
  """A resumed writer knows each metric's latest value (the epoch summary
  shows train ppl after a resume in the controller phase)."""
  writer.metrics(10, 1, {"train/ppl": 500.0, "train/loss": 6.2})
  writer.metrics(20, 1, {"train/ppl": 400.0})
  writer.metrics(5, 1, {"ctrl/reward": 0.1}, counter="ctrl_step")
  offsets = writer.offsets()
  writer.metrics(10, 1, {"ctrl/reward": 0.9}, counter="ctrl_step")
  writer.close()
  resumed = metrics.RunWriter(str(tmp_path))
  resumed.truncate(offsets)
  resumed.close()
  assert resumed.last_values == {"train/ppl": 400.0, "train/loss": 6.2,
                                 "ctrl/reward": 0.1}


def test_truncate_restores_null_values_as_nan(tmp_path, writer):
  """A non-finite latest value (null in the file) comes back as NaN, as the
  uninterrupted run holds it, not as an older finite value."""
  writer.metrics(1, 1, {"ctrl/sampled_ppl": 5.0})
  writer.metrics(2, 1, {"ctrl/sampled_ppl": float("inf")})
  offsets = writer.offsets()
  writer.close()
  resumed = metrics.RunWriter(str(tmp_path))
  resumed.truncate(offsets)
  resumed.close()
  assert math.isnan(resumed.last_values["ctrl/sampled_ppl"])
