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
  """Tiny sizes: one row per (hidden, S) with positive rates, the
  speedup_h{H}_s{S} keys, JSON last line."""
  from benchmarks import stacked_seeds
  result = stacked_seeds.main([
      "--seeds", "2", "--hidden", "8", "--nodes", "3", "--batch", "2",
      "--bptt", "3", "--vocab", "20", "--window", "2", "--repeats", "1"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last) == result
  assert [(r["hidden"], r["seeds"]) for r in result["rows"]] == [(8, 2)]
  for key, value in result["rows"][0].items():
    assert value > 0, key
  assert result["speedup_h8_s2"] == result["rows"][0]["speedup"]


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


def test_controller_benchmark_runs(capsys):
  """Tiny sizes: same tokens as the reference sampler, JSON last line."""
  import jax
  from benchmarks import controller
  result = controller.main([
      "--num-cells", "8", "--score-cells", "2", "--nodes", "2", "--hidden",
      "4", "--repeats", "2", "--steps", "1", "--warmup", "1", "--preset",
      "smoke"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last) == result
  assert result["tokens_match"]
  assert result["backend"] == jax.default_backend()
  for key in ("sample_1000_ms", "sample_1000_ms_reference", "score_grad_ms",
              "score_grad_ms_reference", "step_ms"):
    assert result[key] > 0, key


def test_probe_stats_benchmark_runs(capsys):
  """Tiny sizes: the statistics of the probe run, JSON last line with the
  total and its parts."""
  from benchmarks import probe_stats
  result = probe_stats.main([
      "--num-cells", "16", "--num-permutations", "19", "--num-bootstrap",
      "20", "--ged-max-pairs", "10", "--num-inf", "2", "--carry-dim", "6"])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  assert json.loads(last) == result
  assert result["num_cells"] == 16 and result["ged_pairs"] == 10
  for key in ("total_s", "analyse_s", "mantel_s", "bootstrap_s", "ridge_s",
              "neighbours_s", "ged_s", "graph_metrics_s"):
    assert result[key] > 0, key
  assert result["analyse_s"] >= result["total_s"]
  assert set(result["main_p_mantel"]) >= {"aligned_edit_distance",
                                          "abs_ppl_difference"}
