"""The benchmark script runs end to end and keeps its one-compile promise."""

import json

from benchmarks import supernet_step


def test_supernet_step_benchmark_compiles_once(capsys):
  """Tiny sizes: a new cell every step, one compilation, JSON last line."""
  result = supernet_step.main([
      "--hidden", "8", "--nodes", "4", "--batch", "2", "--bptt", "3",
      "--vocab", "20", "--steps", "4", "--warmup", "1", "--peak-size", "64",
      "--breakdown"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last) == result
  assert result["compiles"] == 1
  assert result["distinct_cells"] > 1
  for key in ("tokens_per_s", "step_s", "gflops_per_s",
              "matmul_peak_gflops_per_s", "peak_fraction", "decoder_s",
              "cell_s", "small_matmul_gflops_per_s"):
    assert result[key] > 0, key


def test_step_flops_formula():
  """3 * T * B * (4 H^2 (N + 1) + 2 H V), as documented."""
  assert supernet_step.step_flops(hidden=2, nodes=3, vocab=5, batch=7,
                                  bptt=11) == 3 * 11 * 7 * (4 * 4 * 4 + 2 * 2 * 5)


def test_stacked_seeds_benchmark_runs(capsys):
  """Tiny sizes: one row per S with positive rates, JSON last line."""
  from benchmarks import stacked_seeds
  result = stacked_seeds.main([
      "--seeds", "1", "2", "--hidden", "8", "--nodes", "3", "--batch", "2",
      "--bptt", "3", "--vocab", "20", "--steps", "2", "--ctrl-steps", "2"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last) == result
  assert [r["seeds"] for r in result["rows"]] == [1, 2]
  for row in result["rows"]:
    for key, value in row.items():
      assert value > 0, key


def test_search_loop_benchmark_runs(capsys):
  """Tiny sizes: the real loop and the bare steps give rates and ratios."""
  from benchmarks import search_loop
  result = search_loop.main([
      "--hidden", "8", "--batch", "4", "--steps", "2", "--ctrl-steps", "2",
      "--log-every", "1", "--repeats", "1"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last) == result
  for key in ("shared_loop_over_bare", "ctrl_loop_over_bare",
              "loop_shared_steps_per_s", "bare_ctrl_steps_per_s"):
    assert result[key] > 0, key
