"""Devices and hosts: the mesh a run computes on, where its arrays live, and
the multi-host start.

Every run computes on a :class:`jax.sharding.Mesh` of two axes:

* ``seeds``: stacked searches (:mod:`nas_jax.seeds`) split over devices, each
  device advancing ``S / seeds`` of them;
* ``data``: the batch columns of the train and validation data (and the
  supernet carry) split over devices, every device holding the same
  parameters: data parallelism, with the gradients averaged by the
  all-reduce XLA inserts for the replicated parameters.

The sizes come from ``config.mesh`` (0 = automatic: all devices on the seeds
axis when several seeds run, otherwise on the data axis; see
:func:`mesh_shape`). The steps themselves are not written for devices: they
are the ordinary jitted functions of :mod:`nas_jax.steps`, compiled here with
input and output shardings (:func:`Placement.window`), and XLA partitions
them. Random draws do not depend on the partition (JAX's partitionable
threefry), so a run gives the same results on any mesh, to float tolerance
(``tests/test_devices.py`` checks seeds sharding, data parallelism, and a
run stopped on a 4-device mesh and resumed on a 1-device one, with 4
simulated CPU devices).

Multi-host (:func:`initialize`): with ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (or in an ``srun`` step of several
tasks) JAX's distributed runtime joins the processes, and the mesh spans
every process's devices. Every process runs the same program on the same
data; process 0 alone writes logs, reports and run-directory files
(:func:`is_writer`); all processes take part in checkpoints, as orbax
requires. Metrics come back replicated, so every process reads the same
values and takes the same decisions; a stop after a signal is agreed
(:func:`agree_max`); after the search the others wait for process 0's
analysis (:func:`wait_for_all`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from nas_jax import steps

SEEDS, DATA = "seeds", "data"


class MeshError(ValueError):
  """The requested mesh does not fit the devices, seeds or batch."""


class WorkerDone(Exception):
  """Raised on processes other than 0 when a multi-host search ends: process
  0 alone analyses the runs and writes the results."""


# ---------------------------------------------------------------------------
# Multi-host start.


def initialize(coordinator_address: str = "", num_processes: int = 0,
               process_id: int = -1) -> bool:
  """Joins a multi-process job; True if JAX's distributed runtime started.

  Explicit flags (all three) win; otherwise an ``srun`` step of more than
  one task (``SLURM_STEP_NUM_TASKS > 1``, set only inside a step, not in the
  batch script) is detected by JAX itself. A single process does nothing.
  Call before any JAX computation.
  """
  explicit = (coordinator_address, num_processes > 0, process_id >= 0)
  if any(explicit):
    if not all(explicit):
      raise MeshError(
          "multi-host needs all of --coordinator_address, --num_processes "
          "and --process_id (or none of them, e.g. under SLURM)")
    if not 0 <= process_id < num_processes:
      raise MeshError(f"--process_id must be in [0, {num_processes}), got "
                      f"{process_id}")
    if num_processes == 1:
      return False
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
    return True
  if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:
    jax.distributed.initialize()
    return True
  return False


def is_writer() -> bool:
  """Whether this process writes files and prints reports (process 0)."""
  return jax.process_index() == 0


def agree_max(value: int) -> int:
  """The largest ``value`` over all processes (itself on one process): a
  decision every process takes together, e.g. to stop after a signal that
  reached only some of them (Python's handler sees SIGINT and SIGTERM: the
  search loop installs it over the one JAX's preemption service sets)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


# How long the workers wait for process 0's analysis (a paper-size probe
# takes minutes to hours).
_ANALYSIS_TIMEOUT_S = 7 * 24 * 3600


def wait_for_all(name: str) -> None:
  """Blocks until every process reaches the barrier ``name`` (no-op on one
  process), on the distributed runtime's coordination service (orbax's
  barrier), not a device collective: the workers wait there while process
  0 analyses, instead of exiting into JAX's shutdown barrier, which gives up
  after minutes."""
  if jax.process_count() > 1:
    import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
    ocp.multihost.sync_global_processes(name, timeout=_ANALYSIS_TIMEOUT_S)


# ---------------------------------------------------------------------------
# The mesh.


@dataclasses.dataclass(frozen=True)
class MeshShape:
  seeds: int
  data: int

  @property
  def size(self) -> int:
    return self.seeds * self.data


def mesh_shape(config_mesh, *, num_seeds: int, batch_size: int,
               num_devices: int) -> MeshShape:
  """The ``(seeds, data)`` axis sizes for a run of ``num_seeds`` stacked seeds.

  ``config_mesh.seeds`` / ``config_mesh.data`` of 0 are chosen: with
  several seeds, the largest divisor of the device count that is at most
  ``num_seeds`` on the seeds axis and the rest on the data axis; with one,
  every device on the data axis. The data axis must divide the batch; when
  a chosen one does not, it shrinks to the largest divisor that does (the
  remaining devices idle; :func:`describe` says so).

  Raises:
    MeshError: explicit sizes that need more devices than there are, or a
      data axis that does not divide ``train.batch_size``.
  """
  seeds, data = int(config_mesh.seeds), int(config_mesh.data)
  if seeds < 0 or data < 0:
    raise MeshError(f"config mesh.seeds and mesh.data must be >= 0 (0: "
                    f"automatic), got {seeds} and {data}")
  if seeds and data and seeds * data > num_devices:
    raise MeshError(f"config mesh.seeds x mesh.data = {seeds} x {data} needs "
                    f"{seeds * data} devices; there are {num_devices}")
  if seeds > num_devices or data > num_devices:
    raise MeshError(f"config mesh asks for {max(seeds, data)} devices on one "
                    f"axis; there are {num_devices}")
  if seeds > 1 and num_seeds == 1:
    seeds = 1  # One run: a seeds axis has nothing to split.
  if not seeds:
    seeds = (_largest_divisor(num_devices // max(data, 1), num_seeds)
             if num_seeds > 1 else 1)
  if not data:
    data = _largest_divisor(num_devices // seeds, batch_size,
                            divides=batch_size)
  if batch_size % data:
    raise MeshError(f"config mesh.data = {data} must divide train.batch_size "
                    f"= {batch_size} (each device takes batch / data columns)")
  if jax.process_count() > 1 and seeds * data != num_devices:
    raise MeshError(
        f"a multi-host mesh must use every device: mesh.seeds x mesh.data = "
        f"{seeds} x {data} of {num_devices} (set both, with a train.batch_size "
        "that the data axis divides)")
  return MeshShape(seeds=seeds, data=data)


def _largest_divisor(n: int, at_most: int, divides: int | None = None) -> int:
  """The largest divisor of ``n`` that is ``<= at_most`` (and divides
  ``divides``)."""
  for d in range(min(n, at_most), 0, -1):
    if n % d == 0 and (divides is None or divides % d == 0):
      return d
  return 1


def make_mesh(shape: MeshShape) -> Mesh:
  """A ``(seeds, data)`` mesh over the first ``shape.size`` devices, with
  automatic (compiler-propagated) sharding."""
  return jax.make_mesh((shape.seeds, shape.data), (SEEDS, DATA),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=jax.devices()[:shape.size])


def describe(shape: MeshShape, num_seeds: int) -> str:
  """One line: the mesh, the padding, idle devices."""
  n = len(jax.devices())
  text = (f"mesh: {shape.seeds} (seeds) x {shape.data} (data) of {n} "
          f"{jax.devices()[0].platform.upper()} device{'s' if n > 1 else ''}")
  if jax.process_count() > 1:
    text += f" on {jax.process_count()} processes"
  padded = padded_seeds(num_seeds, shape)
  if padded > num_seeds:
    text += (f"; {num_seeds} seeds padded to {padded} (a multiple of the "
             f"seeds axis) with copies of the last seed, whose results are "
             "discarded")
  if shape.size < n:
    text += f"; {n - shape.size} device(s) idle"
  return text


def padded_seeds(num_seeds: int, shape: MeshShape) -> int:
  """``num_seeds`` rounded up to a multiple of the seeds axis."""
  return -(-num_seeds // shape.seeds) * shape.seeds


# ---------------------------------------------------------------------------
# Where the arrays live.


def _carry_spec(leading: tuple) -> P:
  return P(*leading, None, DATA, None)  # [.., M, B, H]: B split.


def state_shardings(state, mesh: Mesh, *, stacked: bool):
  """A :class:`NamedSharding` per leaf of a (possibly stacked) TrainState:
  the leading seed axis on ``seeds``, the carry's batch on ``data``, the
  rest replicated."""
  leading = (SEEDS,) if stacked else ()
  rest = lambda x: NamedSharding(mesh, P(*leading))
  shardings = jax.tree.map(rest, state)
  return shardings._replace(
      carry=NamedSharding(mesh, _carry_spec(leading)))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Train/validation columns ``[rows, B]``: the batch on ``data``."""
  return NamedSharding(mesh, P(None, DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def place(tree, shardings):
  """``tree`` (host or device arrays) laid out by ``shardings``.

  One process: :func:`jax.device_put`. Several: each process builds its
  addressable shards from its own (identical) copy of the values, so no
  array is gathered on one host. Typed PRNG keys travel as their raw data
  (a spec shorter than an array's rank replicates the trailing axes).
  """
  raw = _key_data(tree)
  if jax.process_count() == 1:
    out = jax.device_put(raw, shardings)
  else:
    def one(x, sharding):
      if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
      host = np.asarray(x)
      return jax.make_array_from_callback(host.shape, sharding,
                                          lambda index: host[index])
    out = jax.tree.map(one, raw, shardings)
  return _wrap_keys(out, tree)


def _is_key(x) -> bool:
  return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(tree):
  return jax.tree.map(
      lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _wrap_keys(raw, template):
  return jax.tree.map(
      lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
      if _is_key(t) else x, raw, template)


def to_host(tree):
  """Every leaf as NumPy on every process (replicated arrays read locally,
  sharded ones gathered across processes); typed PRNG keys as their raw
  ``uint32`` data (see :func:`local_copy`)."""
  raw = _key_data(tree)
  if jax.process_count() == 1:
    return jax.device_get(raw)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return jax.tree.map(
      lambda x: (np.asarray(x) if not isinstance(x, jax.Array)
                 or x.is_fully_replicated
                 else multihost_utils.process_allgather(x, tiled=True)), raw)


def local_copy(tree):
  """``tree`` on this process's first device, whole (keys stay keys): what
  one process computes with alone, e.g. process 0's analysis."""
  return _wrap_keys(jax.device_put(to_host(tree), jax.local_devices()[0]),
                    tree)


# ---------------------------------------------------------------------------
# Compiled programs with their layouts.


class Placement:
  """A run's mesh, the layouts of its state and data, and the programs
  compiled for them (each once per mesh and process).

  A ``stacked`` state holds ``padded`` seeds on its leading axis:
  ``num_seeds`` real ones, then copies of the last (see :func:`describe`).
  """

  def __init__(self, shape: MeshShape, *, num_seeds: int = 1,
               stacked: bool = False):
    self.shape, self.stacked = shape, stacked
    self.mesh = make_mesh(shape)
    self.padded = padded_seeds(num_seeds, shape) if stacked else 1
    self.data = data_sharding(self.mesh)
    self.replicated = replicated(self.mesh)

  def state_shardings(self, state):
    """The shardings of this placement's state (``state`` may be one
    seed's: only the tree structure matters)."""
    return state_shardings(state, self.mesh, stacked=self.stacked)

  def seed_shardings(self, state):
    """One seed's state: replicated, the carry's batch on ``data``."""
    return state_shardings(state, self.mesh, stacked=False)

  def put_state(self, state):
    """One run's state laid out on the mesh (not stacked)."""
    return place(state, self.seed_shardings(state))

  def put_data(self, columns):
    return place(columns, self.data)

  def stack(self, seed_states):
    """The seeds' states stacked (padded) on the leading axis, laid out on
    the mesh from host copies."""
    rows = list(seed_states) + [seed_states[-1]] * (
        self.padded - len(seed_states))
    host = jax.tree.map(lambda *xs: np.stack(xs), *map(to_host, rows))
    raw = place(host, self.state_shardings(host))
    return _wrap_keys(raw, seed_states[0])

  def unstack(self, states, index: int):
    """Seed ``index``'s state, replicated over the mesh (carry on ``data``)."""
    def build():
      seed = jax.eval_shape(lambda s: jax.tree.map(lambda x: x[0], s), states)
      return jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s),
                     out_shardings=self.seed_shardings(seed))
    return self._program(("unstack", jax.tree.structure(states)),
                         build)(states, index)

  def window(self, step: Callable, length: int, setup, state):
    """``length`` steps of ``step`` as one program (``vmap``-ed over the
    seeds when stacked): the state keeps its layout and is donated, the
    metrics come back replicated."""
    def build():
      def program(s, data_2d):
        run = lambda one: steps.scan_steps(one, data_2d, step=step,
                                           length=length, setup=setup)
        return jax.vmap(run)(s) if self.stacked else run(s)
      shardings = self.state_shardings(state)
      return jax.jit(program, in_shardings=(shardings, self.data),
                     out_shardings=(shardings, self.replicated),
                     donate_argnums=0)
    return self._program(("window", step, length, setup), build)

  def store(self, setup, state):
    """The memory buffer's store (:func:`steps.store`) for every seed."""
    def build():
      one = lambda s: steps.store(s, setup)
      shardings = self.state_shardings(state)
      return jax.jit(jax.vmap(one) if self.stacked else one,
                     in_shardings=(shardings,), out_shardings=shardings,
                     donate_argnums=0)
    return self._program(("store", setup), build)

  def _program(self, key, build: Callable) -> Callable:
    # Shared by every placement on the same mesh: a process that runs many
    # searches (tests, experiments) compiles each program once.
    key = (self.mesh, self.stacked, key)
    if key not in _PROGRAMS:
      _PROGRAMS[key] = build()
    return _PROGRAMS[key]


_PROGRAMS: dict[Any, Callable] = {}
