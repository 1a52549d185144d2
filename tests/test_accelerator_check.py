"""benchmarks/accelerator_check.py runs end to end at tiny sizes on the CPU
(so the device check cannot rot), and its budget and out-of-memory paths
behave."""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import accelerator_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KEYS = (
    "device_kind", "device_count", "platform", "backend", "jax_version",
    "sizes", "budget_s", "supernet_tokens_per_s", "shared_step_ms",
    "controller_step_ms", "paper_shared_step_ms", "paper_controller_step_ms",
    "sample_1000_cells_ms", "stacked_seed_steps_per_s", "peak_memory_bytes",
    "memory_bytes_limit", "estimated_paper_epoch_s",
    "estimated_full_search_h_excl_derive", "estimate_basis",
    "real_steps_finite", "real_steps_losses", "real_steps_log_ppl",
    "real_steps_vocab", "compile_count", "compile_s", "compile_cache_hits",
    "sections", "skipped", "total_wall_s")


def _positive(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_tiny_run_from_the_command_line():
  """The real command, --tiny: one JSON last line with every key, positive
  finite rates, finite real losses, the real steps reusing the programs."""
  env = dict(os.environ)
  # The test checks the plumbing, not the speed: XLA's cheapest compiles.
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_backend_optimization_level=0"
                      " --xla_llvm_disable_expensive_passes=true").strip()
  env["NAS_JAX_ALLOCATOR"] = "default"  # No re-exec: one interpreter start.
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.accelerator_check", "--tiny"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])

  assert set(KEYS) <= set(result), set(KEYS) - set(result)
  assert result["device_count"] >= 1
  assert result["platform"] == "cpu" and result["device_kind"]
  h = str(accelerator_check.TINY["paper_hidden"])
  for key in ("supernet_tokens_per_s", "shared_step_ms", "controller_step_ms"):
    assert _positive(result[key][h]), key
  for key in ("paper_shared_step_ms", "paper_controller_step_ms",
              "sample_1000_cells_ms", "estimated_paper_epoch_s",
              "estimated_full_search_h_excl_derive", "total_wall_s",
              "compile_s"):
    assert _positive(result[key]), key
  assert result["estimate_basis"] == {"shared_steps_per_epoch": 400,
                                      "controller_steps_per_epoch": 2000,
                                      "epochs": 150}
  epoch = (400 * result["paper_shared_step_ms"]
           + 2000 * result["paper_controller_step_ms"]) / 1e3
  assert result["estimated_paper_epoch_s"] == pytest.approx(epoch)
  assert result["estimated_full_search_h_excl_derive"] == pytest.approx(
      150 * epoch / 3600)

  stacked = result["stacked_seed_steps_per_s"]
  assert list(stacked) == [str(s) for s in accelerator_check.TINY["seeds"]]
  for row in stacked.values():
    assert _positive(row["shared_seed_steps_per_s"])
    assert _positive(row["controller_seed_steps_per_s"])

  assert result["real_steps_finite"] is True
  window = accelerator_check.TINY["window"]
  for losses in result["real_steps_losses"].values():
    assert len(losses) == window and all(math.isfinite(x) for x in losses)
  assert result["real_steps_vocab"] == 10_000  # The bundled PTB.
  # The CPU reports no memory statistics: null, not a made-up number.
  assert result["peak_memory_bytes"] is None
  assert result["skipped"] == []  # The default budget fits a tiny run.

  assert result["compile_count"] >= 5
  sections = result["sections"]
  assert sum(s["compiles"] for s in sections.values()) <= result["compile_count"]
  # Same setup and input shapes as the paper timing: no new program.
  assert sections["real_steps"]["compiles"] == 0
  assert set(sections) == {"paper", "real_steps", "sample_cells", "stacked_s1"}


def test_default_sizes_are_the_papers():
  args = accelerator_check.parse_args([])
  assert (args.paper_hidden, args.hidden, args.batch, args.bptt, args.nodes,
          args.vocab, args.ctrl_hidden, args.sample_cells) == (
              1000, 256, 64, 35, 12, 10_000, 100, 1000)
  assert args.seeds == [1, 4, 16] and args.budget_s == 420
  tiny = accelerator_check.parse_args(["--tiny", "--seeds", "1", "2"])
  assert tiny.hidden == accelerator_check.TINY["hidden"]
  assert tiny.seeds == [1, 2]  # An explicit flag wins over --tiny.


def test_paper_config_overrides_only_what_differs():
  args = accelerator_check.parse_args([])
  config, changed = accelerator_check.paper_config(args, 1000)
  assert changed == {}
  assert config.model.hidden_size == 1000 and config.train.batch_size == 64
  _, changed = accelerator_check.paper_config(args, 256)
  assert changed == {"model.hidden_size": 256}


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_budget_skips_what_would_not_fit():
  clock = _Clock()
  budget = accelerator_check.Budget(10.0, clock=clock)
  assert budget.due("a", predicted_s=9.0)
  clock.now = 5.0
  assert not budget.due("b", predicted_s=6.0)
  assert budget.due("c")
  clock.now = 11.0
  assert not budget.due("d")
  assert budget.skipped == ["b", "d"]


def test_stacked_out_of_memory_is_reported_not_raised():
  """An S that runs out of device memory becomes a string, larger S are not
  tried, and the budget stops S whose predicted time does not fit."""
  clock = _Clock()
  budget = accelerator_check.Budget(100.0, clock=clock)

  def measure(s):
    clock.now += 10.0 * s
    if s == 4:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                         "allocate 123 bytes.\nmore")
    return {"shared_seed_steps_per_s": s, "controller_seed_steps_per_s": s}

  rec = accelerator_check.Recorder()
  rows = accelerator_check.stacked_all([1, 4, 16], measure, budget, rec)
  assert rows["1"] == {"shared_seed_steps_per_s": 1,
                       "controller_seed_steps_per_s": 1}
  assert rows["4"].startswith("out of memory: RESOURCE_EXHAUSTED")
  assert "\n" not in rows["4"]
  assert rows["16"].startswith("not tried")
  assert set(rec.sections) == {"stacked_s1", "stacked_s4"}

  budget = accelerator_check.Budget(15.0, clock=clock)
  rows = accelerator_check.stacked_all([1, 2], measure, budget, rec)
  assert list(rows) == ["1"] and budget.skipped == ["stacked_s2"]

  def broken():
    raise ValueError("not a memory error")

  with pytest.raises(ValueError):  # Other errors propagate.
    accelerator_check.guarded(broken)
