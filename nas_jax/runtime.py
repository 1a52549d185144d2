"""The process around the computation: the memory allocator and JAX's
persistent compilation cache.

**Allocator.** XLA on the CPU allocates every step's large temporaries
afresh. With glibc's defaults, blocks above the mmap threshold are mapped
and unmapped each time: about 150 MB and 39,000 page faults a shared step at
the CPU defaults, and most of a step's system time. :data:`GLIBC_TUNABLES`
keeps freed memory in one heap instead (no mmap for large blocks, no trim),
which removed the faults and sped up the controller step by ~1.3x on the
2-core development machine (``benchmarks/supernet_step.py`` reports whether
it is active). glibc reads the setting only when a process starts, so
:func:`reexec_with_tuned_allocator` restarts the launcher with it; set
``NAS_JAX_ALLOCATOR=default`` (or your own ``GLIBC_TUNABLES``) to opt out.

**Compilation cache.** The shared and controller steps take seconds to
compile; :func:`enable_compilation_cache` keeps compiled programs on disk
(``$JAX_COMPILATION_CACHE_DIR`` if set, else ``~/.cache/nas_jax/jax``,
``$XDG_CACHE_HOME`` respected; ``--compilation_cache`` sets it), so a
resumed run, a second experiment or a smoke run starts in about a second.
"""

from __future__ import annotations

import os
import platform
import sys

GLIBC_TUNABLES = ("glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                  "glibc.malloc.trim_threshold=17179869184")
ALLOCATOR_ENV = "NAS_JAX_ALLOCATOR"  # "tuned" (default) or "default".


def allocator_tuned() -> bool:
  """Whether this process started with :data:`GLIBC_TUNABLES`."""
  return GLIBC_TUNABLES in os.environ.get("GLIBC_TUNABLES", "")


def reexec_with_tuned_allocator() -> None:
  """Restarts this Python program with :data:`GLIBC_TUNABLES` set, once.

  The same interpreter, arguments and way of starting (``python file.py``
  or ``python -m module``). Does nothing when the process already has a
  ``GLIBC_TUNABLES`` (ours or the user's), when ``NAS_JAX_ALLOCATOR=default``,
  or off Linux/glibc, where the setting means nothing. Call it first thing:
  nothing done before it survives.
  """
  if (os.environ.get(ALLOCATOR_ENV, "tuned") == "default"
      or "GLIBC_TUNABLES" in os.environ or sys.platform != "linux"
      or platform.libc_ver()[0] != "glibc"):
    return
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  if spec is None and (not sys.argv or not os.path.isfile(sys.argv[0])):
    return  # python -c or an interactive session: nothing to restart.
  args = (["-m", spec.name] + sys.argv[1:]) if spec is not None else sys.argv
  env = dict(os.environ, GLIBC_TUNABLES=GLIBC_TUNABLES)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + list(args), env)


def default_cache_dir() -> str:
  """``$JAX_COMPILATION_CACHE_DIR`` when set, else the user cache folder."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "nas_jax", "jax")


def enable_compilation_cache(path: str) -> None:
  """Keeps compiled programs in ``path`` (created if missing); ``""`` leaves
  JAX's own setting (off, or ``JAX_COMPILATION_CACHE_DIR``)."""
  if not path:
    return
  import jax  # pylint: disable=import-outside-toplevel
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  # The steps compile in seconds; tiny eager programs are not worth a file.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
