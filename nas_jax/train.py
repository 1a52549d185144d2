"""The search loop: ENAS, random search with weight sharing (RS-WS), and
one fixed cell trained alone (``search.algorithm="fixed"``, ``train_fixed``).

One *epoch* is a shared phase (``train.steps_per_epoch`` steps of the
supernet, one sampled cell per slot and step) followed, for ENAS, by a
controller phase (``controller.steps_per_epoch`` REINFORCE steps), and, every
``derive.every_epochs`` epochs and at the last one, a derive phase. With a
fixed cell the "sampler" always returns ``search.arch``: the shared phase
trains an ordinary language model through the same supernet code, and the
derive phase evaluates that cell.

This module is the host side only: :func:`train_and_evaluate` checks the
config (:mod:`nas_jax.settings`), binds the run directory
(:mod:`nas_jax.rundir`), and drives the jitted steps of :mod:`nas_jax.steps`
phase by phase, each phase described as data (:class:`Phase`), with
progress bars, logs (:mod:`nas_jax.metrics`) and checkpoints; see
``README.md`` for the run directory it writes. After :func:`make_setup`, it
reads the run's :class:`settings.Setup`, never the raw config, for any
value the setup holds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import sys
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nas_jax import data
from nas_jax import devices
from nas_jax import evaluation
from nas_jax import metrics as metrics_lib
from nas_jax import rundir
from nas_jax import search_space
from nas_jax import settings
from nas_jax import steps


class TrainingDiverged(RuntimeError):
  """A loss or reward became non-finite; the message names step and checkpoint."""


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped the run; the message says what was saved.

  The loop raises it at the next window end after saving a checkpoint there
  (:class:`_Signals`); the launcher prints the message and exits with
  :attr:`exit_status` (130 for SIGINT, 143 for SIGTERM, as a shell would).
  """

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = int(signum)

  @property
  def exit_status(self) -> int:
    return 128 + self.signum


_SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


class _Signals:
  """While the loop runs, SIGINT and SIGTERM only set :attr:`received`; the
  loop saves and stops at the next window end. A second SIGINT stops at once
  (``KeyboardInterrupt``; the last checkpoint is then the last periodic one).
  Outside the main thread (where Python delivers no signals) it does nothing.
  """

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in _SIGNAL_NAMES:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.received is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signum
    print(f"\n{_SIGNAL_NAMES[signum]} received: saving a checkpoint at the "
          "next step boundary, then stopping (Ctrl-C again stops at once)",
          file=sys.stderr, flush=True)

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}


def _say(*args, **kwargs) -> None:
  """``print`` on process 0 only (multi-host: one voice for the job)."""
  if devices.is_writer():
    print(*args, **kwargs)


# What bad input raises before a run starts: the launcher reports these as
# one line, never a traceback.
INPUT_ERRORS = (data.DataError, settings.ConfigError, rundir.WorkdirMismatch,
                devices.MeshError)


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase of an epoch, as the loop runs it.

  The loop runs the phase in windows of ``log_every`` steps (and any
  remainder before the phase end), each one jitted ``lax.scan``
  (:meth:`devices.Placement.window`) whose stacked metrics are read once. Logs close
  and checkpoints land only at window ends (``checkpoint_every`` is a
  multiple of ``log_every``), so a resumed run logs exactly the same windows.
  """
  name: str  # Progress bar and divergence message ("shared step 12").
  counter: str  # The TrainState field counting its steps; the logs' index.
  steps_per_epoch: int
  step: Callable  # The jitted step: (state, data, *, setup) -> (state, m).
  data: jax.Array  # What the step reads: train or validation columns.
  finite: Callable[[dict], bool]  # One step's host metrics -> sane?
  what: str  # What diverged when ``finite`` is false.
  scalars: Callable[[dict], dict]  # One step's host metrics -> scalars.
  summary: Callable[[dict], dict]  # Window means -> logged values.
  rate_key: str  # The logged key of the phase's steps per second.
  log_cells: bool = False  # Write each step's cells to archs.jsonl.


def _shared_phase(setup: settings.Setup, train_data: jax.Array) -> Phase:
  return Phase(
      name="shared", counter="shared_step",
      steps_per_epoch=setup.shared.steps_per_epoch,
      step=steps.shared_step, data=train_data,
      finite=lambda m: math.isfinite(float(m["loss"])), what="training loss",
      scalars=lambda m: {"loss": float(m["loss"]),
                         "grad_norm": float(m["grad_norm"]),
                         "lr": float(m["lr"])},
      summary=lambda means: {
          "train/loss": means["loss"],
          "train/ppl": metrics_lib.exp_or_inf(means["loss"]),
          "train/grad_norm": means["grad_norm"], "train/lr": means["lr"]},
      rate_key="train/steps_per_s")


_CTRL_SCALARS = ("reward", "entropy", "baseline", "loss", "log_ppl")
_BUFFER_SCALARS = ("replay_loss", "replay_weight", "buffer_size")


def _ctrl_summary(means: dict, setup: settings.Setup) -> dict:
  values = {"ctrl/reward": means["reward"], "ctrl/baseline": means["baseline"],
            "ctrl/entropy": means["entropy"], "ctrl/loss": means["loss"],
            # The geometric mean ppl of the window's cells: finite while
            # every cell's log ppl is (an arithmetic mean overflows as soon
            # as one cell's ppl does).
            "ctrl/sampled_log_ppl": means["log_ppl"],
            "ctrl/sampled_ppl": metrics_lib.exp_or_inf(means["log_ppl"]),
            "ctrl/lr": setup.reinforce.lr}
  if setup.buffer.enabled:
    # The replay loss is reported from the first stored cell on; its weight
    # in the loss is 0 before buffer.replay_start_epoch.
    if means["buffer_size"] > 0:
      values["ctrl/replay_loss"] = means["replay_loss"]
    values["ctrl/replay_weight"] = means["replay_weight"]
    values["buffer/size"] = means["buffer_size"]
  return values


def _ctrl_phase(setup: settings.Setup, valid_data: jax.Array) -> Phase:
  names = _CTRL_SCALARS + (_BUFFER_SCALARS if setup.buffer.enabled else ())
  return Phase(
      name="controller", counter="ctrl_step",
      steps_per_epoch=setup.reinforce.steps_per_epoch,
      step=steps.controller_step, data=valid_data,
      finite=lambda m: bool(np.isfinite(m["loss"])
                            and np.isfinite(m["baseline"])),
      what="controller loss",
      scalars=lambda m: {k: float(m[k]) for k in names},
      summary=functools.partial(_ctrl_summary, setup=setup),
      rate_key="ctrl/steps_per_s", log_cells=True)


def _load_data(config: ml_collections.ConfigDict):
  """``(corpus, setup, train columns, valid columns)``; every check runs
  before the run directory is bound, so a typo leaves no directory that
  refuses the corrected command."""
  corpus = data.load_corpus(config.data.dir,
                            verify=config.data.verify_checksums)
  setup = settings.make_setup(config, corpus.vocab_size)
  t = setup.shared
  try:
    train_data = jnp.asarray(data.batchify(corpus.train, t.batch_size))
    valid_data = jnp.asarray(data.batchify(corpus.valid, t.batch_size))
    data.batchify(corpus.test, setup.eval.batch_size)
  except ValueError as e:
    raise settings.ConfigError(
        f"config train.batch_size / eval.batch_size: {e}")
  for name, arr in (("train", train_data), ("valid", valid_data)):
    if arr.shape[0] < t.bptt + 1:
      raise settings.ConfigError(
          f"the {name} split has {arr.shape[0]} rows at batch size "
          f"{t.batch_size}, fewer than train.bptt + 1 = {t.bptt + 1}")
  return corpus, setup, train_data, valid_data


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> rundir.LoadedRun:
  """Runs (or resumes) a search in ``workdir``; returns the finished run
  (its ``best`` is the best-cell record, as in ``best_arch.json``).

  Raises:
    data.DataError: the data directory is missing or fails its checksums.
    settings.ConfigError: an invalid config value (names the key).
    rundir.WorkdirMismatch: ``workdir`` holds a run of another config.
    TrainingDiverged: a non-finite loss (names step and last checkpoint).
    Interrupted: SIGINT or SIGTERM; a checkpoint was saved first.
  """
  return train_many([config], [workdir], stacked=False)[0]


def train_many(configs, workdirs, *, stacked: bool = True
               ) -> list[rundir.LoadedRun]:
  """Runs (or resumes) one search per config, each in its own directory;
  the configs must differ only in ``seed``. Returns the finished runs.

  With ``stacked`` the unfinished runs advance together as one state with a
  leading seed axis, laid out on the seeds axis of the mesh
  (:class:`devices.Placement`): every window of steps is one
  ``vmap``-ed program, while each run keeps its own logs, checkpoints,
  derive and best cell, the same (to float tolerance) as running it alone
  with :func:`train_and_evaluate`. Runs resumed at different points (a
  crash between two seeds' checkpoints) advance in groups of equal
  progress, one group after another. Without ``stacked`` the runs go one
  after another.

  Raises:
    As :func:`train_and_evaluate`; ``settings.ConfigError`` if the configs
    differ in more than ``seed`` or repeat a seed.
  """
  configs, workdirs = list(configs), list(workdirs)
  _check_many(configs, workdirs)
  corpus, setup, train_data, valid_data = _load_data(configs[0])
  # Every run is restored onto the one-run mesh (data parallel); a stacked
  # group is re-laid out on its own mesh by _Loop.
  single = devices.Placement(_mesh_shape(configs[0], setup, num_seeds=1))
  runs = []
  try:
    for config, workdir in zip(configs, workdirs):
      runs.append(_Run(config, workdir, setup, single))
    groups = {}
    for run in runs:
      if run.finished:
        _say(f"run {run.workdir} already complete: {best_summary(run.best)}",
             flush=True)
      else:
        groups.setdefault(run.progress() if stacked else id(run),
                          []).append(run)
    if stacked and len(groups) > 1:
      _say(f"{sum(map(len, groups.values()))} runs resumed at "
           f"{len(groups)} different points: they advance in "
           f"{len(groups)} groups", flush=True)
    with _Signals() as signals:
      for group in groups.values():
        _Loop(group, setup, corpus, train_data, valid_data, signals,
              single).run()
    # After the loop's last check (multi-host: if any process got one).
    received = devices.agree_max(signals.received or 0)
    if received:
      raise Interrupted(
          received, f"interrupted by {_SIGNAL_NAMES[received]} as the "
          "search ended (saved); rerun the same command to continue")
    if jax.process_count() > 1:
      # Multi-host: process 0 analyses the runs alone, on local copies.
      for run in runs:
        run.state = devices.local_copy(run.state)
      if not devices.is_writer():
        raise devices.WorkerDone(
            f"process {jax.process_index()}: {len(runs)} search"
            f"{'es' if len(runs) > 1 else ''} done; process 0 writes the "
            "results")
    return [run.loaded(corpus, setup) for run in runs]
  finally:
    for run in runs:
      run.close()


def _mesh_shape(config, setup, num_seeds) -> devices.MeshShape:
  """``config.mesh`` resolved for ``num_seeds`` stacked seeds on this
  job's devices (a config without the section: automatic)."""
  mesh = config.get("mesh") or ml_collections.ConfigDict(
      {"seeds": 0, "data": 0})
  return devices.mesh_shape(mesh, num_seeds=num_seeds,
                            batch_size=setup.shared.batch_size,
                            num_devices=len(jax.devices()))


def _check_many(configs, workdirs) -> None:
  if not configs or len(configs) != len(workdirs):
    raise ValueError(f"need one workdir per config, got {len(configs)} "
                     f"configs and {len(workdirs)} workdirs")
  seeds = [int(c.seed) for c in configs]
  if len(set(seeds)) != len(seeds):
    raise settings.ConfigError(f"config seeds repeat: {seeds}")
  if len(set(workdirs)) != len(workdirs):
    raise ValueError(f"workdirs repeat: {workdirs}")
  first = rundir.flatten(configs[0].to_dict())
  first.pop("seed")
  for config in configs[1:]:
    other = rundir.flatten(config.to_dict())
    other.pop("seed")
    differences = rundir.config_differences(first, other)
    if differences:
      raise settings.ConfigError(
          "runs trained together may differ only in seed; seed "
          f"{config.seed} differs in: {'; '.join(differences)}")


class _Run:
  """One run's files (checkpoints, logs) and record, restored or new."""

  def __init__(self, config, workdir, setup, placement: devices.Placement):
    self.config, self.workdir = config, workdir
    self.ckpt = rundir.RunDirectory(
        workdir, config, max_to_keep=setup.cadence.keep_checkpoints)
    # Multi-host: process 0 writes the logs; the others keep the values.
    self.writer = (metrics_lib.RunWriter if devices.is_writer()
                   else metrics_lib.ReadOnlyWriter)(workdir)
    # Laid out on the mesh first: orbax restores each array straight into
    # its shards, whatever device count wrote the checkpoint.
    fresh = placement.put_state(steps.init_state(setup, config.seed))
    restored = self.ckpt.restore(fresh)
    if restored is None:
      self.state = fresh
      self.writer.truncate({})
      self.finished, self.best = False, None
      _say(f"run directory: {workdir} (new run)", flush=True)
    else:
      self.state, meta = restored
      self.writer.truncate(meta["offsets"])
      self.finished, self.best = meta.get("finished", False), meta.get("best")
      if not self.finished:
        _say(f"run directory: {workdir} (resumed in epoch "
             f"{int(self.state.epoch) + 1}/{setup.cadence.epochs} at shared "
             f"step {int(self.state.shared_step)}, controller step "
             f"{int(self.state.ctrl_step)})", flush=True)

  def progress(self) -> tuple[int, int, int]:
    return (int(self.state.epoch), int(self.state.shared_step),
            int(self.state.ctrl_step))

  def save(self, state, finished=False):
    # offsets() flushes the logs first, so the checkpoint never points past
    # what is on disk.
    self.ckpt.save(state, {"offsets": self.writer.offsets(),
                           "finished": finished, "best": self.best})

  def close(self):
    self.writer.close()
    self.ckpt.close()

  def loaded(self, corpus, setup) -> rundir.LoadedRun:
    """The run as :func:`rundir.load_run` would load it now."""
    return rundir.LoadedRun(
        config=self.config, corpus=corpus, setup=setup, state=self.state,
        initial=steps.init_state(setup, self.config.seed),
        description=self.ckpt.latest_description(), best=self.best,
        finished=self.finished)


def best_summary(best: dict | None) -> str:
  """One line for a best-cell record (``best_arch.json``)."""
  if not best:
    return "no derived cell yet"
  text = f"best cell {best['arch']} (epoch {best['epoch']}) valid ppl " + (
      f"{best['valid_ppl']:.1f}")
  if "test_ppl" in best:
    text += f", test ppl {best['test_ppl']:.1f}"
  return text


def _duration(seconds: float) -> str:
  """``1h02m``, ``3m05s`` or ``42s``."""
  seconds = int(round(seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


def _first(x) -> int:
  """A counter of the (possibly stacked) state: equal across its seeds."""
  return int(np.asarray(devices.to_host(x)).reshape(-1)[0])


class _Loop:
  """Drives runs at the same progress through their remaining epochs: one
  run with its own state, or several stacked on a leading seed axis."""

  def __init__(self, runs, setup, corpus, train_data, valid_data,
               signals: _Signals | None, single: devices.Placement):
    self.runs, self.setup, self.corpus = runs, setup, corpus
    self.signals = signals
    self._saved_at = None  # Progress of the last save.
    self.stacked = len(runs) > 1
    if self.stacked:
      shape = _mesh_shape(runs[0].config, setup, num_seeds=len(runs))
      self.placement = devices.Placement(shape, num_seeds=len(runs),
                                         stacked=True)
      self.state = self.placement.stack([run.state for run in runs])
      for run in runs:
        run.state = None  # The stacked state holds it until the end.
    else:
      self.placement = single
      self.state = runs[0].state
    _say(devices.describe(self.placement.shape, len(runs)), flush=True)
    train_data = self.placement.put_data(train_data)
    self.valid_data = valid_data = self.placement.put_data(valid_data)
    self.phases = (_shared_phase(setup, train_data),
                   _ctrl_phase(setup, valid_data))

  def _seed_state(self, i):
    return (self.placement.unstack(self.state, i) if self.stacked
            else self.state)

  def _progress(self) -> tuple[int, int, int]:
    # One host read (multi-host: one gather) for the three counters.
    counters = devices.to_host((self.state.epoch, self.state.shared_step,
                                self.state.ctrl_step))
    return tuple(int(np.asarray(c).reshape(-1)[0]) for c in counters)

  def save(self, finished=False):
    for i, run in enumerate(self.runs):
      run.save(self._seed_state(i), finished=finished)
      run.finished = finished
    self._saved_at = self._progress()

  def _stop_if_signalled(self, bar=None) -> None:
    """After a SIGINT/SIGTERM: saves (unless this point is saved) and raises
    :class:`Interrupted`. Multi-host: every process stops at the same window
    end if any of them received one (:func:`devices.agree_max`)."""
    if self.signals is None:
      return
    signum = devices.agree_max(self.signals.received or 0)
    if not signum:
      return
    if bar is not None:
      bar.close()
    if self._saved_at != self._progress():
      self.save()
    epoch, shared, ctrl = self._progress()
    epochs = self.setup.cadence.epochs
    where = (f"after the last epoch ({epochs}/{epochs})" if epoch >= epochs
             else f"in epoch {epoch + 1}/{epochs}")
    runs = (f"{len(self.runs)} runs ({', '.join(r.workdir for r in self.runs)})"
            if self.stacked else self.runs[0].workdir)
    raise Interrupted(
        signum, f"interrupted by {_SIGNAL_NAMES[signum]} {where} at shared "
        f"step {shared}, controller step {ctrl}; checkpoint saved in {runs}; "
        "rerun the same command to resume")

  def _diverged(self, run, what, where, epoch):
    inside = f" in {run.workdir}" if self.stacked else ""
    raise TrainingDiverged(
        f"non-finite {what} at {where} (epoch {epoch + 1}){inside}; "
        f"last good checkpoint: {run.ckpt.latest_description()}")

  # -- phases ---------------------------------------------------------------

  def run(self) -> None:
    self._start = (time.perf_counter(), _first(self.state.epoch))
    try:
      while _first(self.state.epoch) < self.setup.cadence.epochs:
        epoch = _first(self.state.epoch)
        for phase in self.phases:
          self._run_phase(phase, epoch)
        self._end_epoch(epoch)
        self._stop_if_signalled()
    finally:
      for i, run in enumerate(self.runs):
        run.state = self._seed_state(i)

  def _run_phase(self, phase: Phase, epoch: int) -> None:
    """Runs what remains of ``phase`` in ``epoch``, window by window."""
    total, cadence = phase.steps_per_epoch, self.setup.cadence
    done = _first(getattr(self.state, phase.counter)) - epoch * total
    if done >= total:
      return
    if phase.counter == "ctrl_step" and steps.store_due(
        self.setup, epoch=epoch, ctrl_step=epoch * total + done):
      self.state = self.placement.store(self.setup, self.state)(self.state)
    where = f" ({len(self.runs)} seeds)" if self.stacked else ""
    bar = metrics_lib.progress(
        total, done,
        f"epoch {epoch + 1}/{cadence.epochs} {phase.name}{where}")
    while done < total:
      # Up to the next multiple of log_every, or the phase end.
      length = min(cadence.log_every - done % cadence.log_every, total - done)
      start = time.perf_counter()
      window = self.placement.window(phase.step, length, self.setup,
                                     self.state)
      self.state, stacked = window(self.state, phase.data)
      stacked = devices.to_host(stacked)
      rate = length / (time.perf_counter() - start)
      per_run = ([{k: v[i] for k, v in stacked.items()}
                  for i in range(len(self.runs))] if self.stacked
                 else [stacked])
      shown = []
      for run, run_metrics in zip(self.runs, per_run):
        means = self._observe(run, phase, epoch, epoch * total + done,
                              run_metrics, length)
        values = phase.summary(means)
        values[phase.rate_key] = rate
        run.writer.metrics(epoch * total + done + length, epoch + 1, values,
                           counter=phase.counter)
        shown.append(list(values.items())[:2])
      done += length
      bar.update(length)
      bar.set_postfix({key: f"{np.mean([v[n][1] for v in shown]):.4g}"
                       for n, (key, _) in enumerate(shown[0])})
      if done % cadence.checkpoint_every == 0 or done == total:
        self.save()
      self._stop_if_signalled(bar)
    bar.close()

  def _observe(self, run, phase: Phase, epoch: int, first_step: int,
               stacked: dict, length: int) -> dict:
    """Checks and logs each step of a run's window; returns its means.

    A non-finite step stops the runs naming it; nothing of its window is
    saved, so the last checkpoint is the last good state.
    """
    window = metrics_lib.Window()
    for k in range(length):
      m = {name: value[k] for name, value in stacked.items()}
      if not phase.finite(m):
        self._diverged(run, phase.what, f"{phase.name} step {first_step + k}",
                       epoch)
      if phase.log_cells:
        run.writer.archs(first_step + k, epoch + 1, m["cells"],
                         m["cell_rewards"], m["cell_log_ppl"])
      window.add(**phase.scalars(m))
    return window.pop()

  def _end_epoch(self, epoch):
    last = epoch + 1 == self.setup.cadence.epochs
    derived = [None] * len(self.runs)
    if last or (epoch + 1) % self.setup.derive.every_epochs == 0:
      derived = [self._derive(run, self._seed_state(i), epoch, final=last)
                 for i, run in enumerate(self.runs)]
    self.state = self.state._replace(epoch=self.state.epoch + 1)
    for run, record in zip(self.runs, derived):
      self._summary(run, epoch, record)
    self.save(finished=last)

  # -- derive ---------------------------------------------------------------

  def _derive(self, run, state, epoch, final):
    """Samples the derive cells, keeps the best, evaluates and logs it."""
    start = time.perf_counter()
    d = self.setup.derive
    seed = f"seed {run.config.seed}: " if self.stacked else ""
    windows = self.setup.eval.max_windows
    splits = "validation and test splits" if final else "validation split"
    _say(f"{seed}epoch {epoch + 1} derive: scoring {d.num_cells} cells on a "
         "validation batch, then the best on the "
         + (f"first {windows} windows of the {splits}" if windows
            else f"whole {splits}"), flush=True)
    cells, ppl = devices.to_host(
        steps.derive_cells(state, self.valid_data, setup=self.setup))
    finite = np.isfinite(ppl)
    if not finite.any():
      self._diverged(run, "derive perplexity of every cell", "the derive",
                     epoch)
    best_i = int(np.argmin(np.where(finite, ppl, np.inf)))
    record = self._evaluate_best(run, state, epoch, cells[best_i],
                                 float(ppl[best_i]), final)
    run.writer.derived(epoch + 1, cells, ppl, best_i)
    run.writer.metrics(_first(state.shared_step), epoch + 1, {
        "valid/ppl": record["valid_ppl"],
        "derive/batch_ppl_best": float(ppl[best_i]),
        "derive/batch_ppl_median": float(np.median(ppl[finite])),
        "derive/unique_cells": len({tuple(r) for r in cells}),
        "derive/seconds": time.perf_counter() - start})
    # ``best`` is the best derived cell so far (epoch summaries); the run's
    # answer, best_arch.json, is the last derive's cell under the final
    # weights, as in ENAS.
    if (run.best is None or record["valid_ppl"] < run.best["valid_ppl"]
        or final):
      run.best = record
    if final:
      if "test_ppl" in record:
        run.writer.metrics(_first(state.shared_step), epoch + 1,
                           {"test/ppl": record["test_ppl"]})
      run.writer.best_arch(record)
    return record

  def _evaluate_best(self, run, state, epoch, tokens, batch_ppl, final
                     ) -> dict:
    """The derived cell's record: exact valid ppl (and test ppl if final)."""
    ev = dict(config=self.setup.model, bptt=self.setup.shared.bptt,
              batch_size=self.setup.eval.batch_size,
              max_windows=self.setup.eval.max_windows)
    cell = jnp.asarray(tokens)
    params = state.shared
    if jax.process_count() > 1:  # Every process evaluates a local copy.
      params = devices.local_copy(params)
    valid_ppl, valid_tokens = evaluation.evaluate_cell(
        params, cell, self.corpus.valid, **ev)
    record = {
        "epoch": epoch + 1, "tokens": tokens.tolist(),
        "arch": str(search_space.Architecture.from_tokens(tokens)),
        "derive_batch_ppl": batch_ppl, "valid_ppl": valid_ppl,
        "valid_tokens": valid_tokens}
    if final:
      record["test_ppl"], record["test_tokens"] = evaluation.evaluate_cell(
          params, cell, self.corpus.test, **ev)
    for key in ("valid_ppl", "test_ppl"):
      if key in record and not math.isfinite(record[key]):
        self._diverged(run, key.replace("_", " ") + " of the derived cell",
                       "the derive", epoch)
    return record

  def _summary(self, run, epoch, derived):
    last = run.writer.last_values
    epochs = self.setup.cadence.epochs
    parts = [f"epoch {epoch + 1}/{epochs}"]
    if self.stacked:
      parts.insert(0, f"seed {run.config.seed}")
    if "train/ppl" in last:
      parts.append(f"train ppl {last['train/ppl']:.1f}")
    if self.setup.reinforce.steps_per_epoch and "ctrl/reward" in last:
      parts.append(f"reward {last['ctrl/reward']:.3f}")
      parts.append(f"entropy {last['ctrl/entropy']:.3f}")
    if derived is not None:
      parts.append(f"derived valid ppl {derived['valid_ppl']:.1f}")
    if run.best is not None:
      parts.append(f"best {run.best['arch']} "
                   f"(valid ppl {run.best['valid_ppl']:.1f})")
    # The ETA extrapolates this process's epochs (the first one compiles).
    start, first_epoch = self._start
    elapsed = time.perf_counter() - start
    left = epochs - (epoch + 1)
    timing = f"elapsed {_duration(elapsed)}"
    if left:
      timing += (f", ETA {_duration(elapsed / (epoch + 1 - first_epoch) * left)}"
                 f" for {left} more epoch{'s' if left > 1 else ''}")
    parts.append(timing)
    _say(" | ".join(parts), flush=True)
