"""Tests for nas_jax.runtime: the allocator restart and the compile cache."""

import os
import platform
import subprocess
import sys

import pytest

from nas_jax import runtime

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from nas_jax import runtime
runtime.reexec_with_tuned_allocator()
print(runtime.allocator_tuned(), sys.argv[1:])
"""

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator setting is glibc's")


def _run(tmp_path, **env):
  script = tmp_path / "script.py"
  script.write_text(_SCRIPT.format(root=REPO_ROOT))
  base = {k: v for k, v in os.environ.items()
          if k not in ("GLIBC_TUNABLES", runtime.ALLOCATOR_ENV)}
  out = subprocess.run([sys.executable, str(script), "a", "b c"],
                       env=base | env, capture_output=True, text=True,
                       timeout=60, check=True)
  return out.stdout.strip()


@glibc_only
def test_restart_sets_the_allocator_and_keeps_the_arguments(tmp_path):
  assert _run(tmp_path) == "True ['a', 'b c']"


@glibc_only
def test_opt_out_and_a_users_own_setting_are_respected(tmp_path):
  assert _run(tmp_path, NAS_JAX_ALLOCATOR="default") == "False ['a', 'b c']"
  assert _run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=2") == (
      "False ['a', 'b c']")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
  assert runtime.default_cache_dir() == str(tmp_path / "jax")
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert runtime.default_cache_dir() == str(tmp_path / "xdg" / "nas_jax" /
                                            "jax")
