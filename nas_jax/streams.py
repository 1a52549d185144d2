"""Every random stream of the codebase, declared once.

A leaf module of integers. Each draw is made from its own stream, so adding a
draw to one part never shifts the numbers of another:

* JAX keys: ``fold_in(key(seed), STREAM)``, then ``fold_in(., counter)``
  with the step, epoch or index that the draw belongs to, so results depend
  only on the seed and the counters, never on where a run was interrupted.
* NumPy generators of the host-side analysis:
  ``np.random.default_rng([seed, STREAM])``.

Changing a number changes the results of every run that uses it.
"""

# JAX streams of a search run (the root is ``state.key = key(config.seed)``;
# 0 is the parameter initialisation).
INIT = 0
SHARED = 1  # shared step: cells and dropout, per shared step.
CONTROLLER = 2  # REINFORCE samples, per controller step.
DERIVE = 3  # derived cells, per epoch.
STORE = 4  # memory buffer: cells stored, per epoch.
REPLAY = 5  # memory buffer: rows replayed, per controller step.

# JAX streams of the analyses (the root is ``key(probe.seed)`` or
# ``key(seed)`` of the experiment).
PROBE = 7  # probe cells, identical for the trained and untrained controller.
DENSITY = 11  # enas_vs_random: controller vs uniform cells.
PROXY = 12  # enas_vs_random: the proxy-trust cells.

# NumPy streams of the host-side statistics (nas_jax.analysis).
MANTEL = 0  # cell permutations of the Mantel tests.
BOOTSTRAP = 1  # resamples of cells or seeds.
CONTROL = 2  # the permuted-pairs control.
FOLDS = 3  # cross-validation folds of the ridge probes.
NEIGHBOURS = 4  # random pairs of the nearest-neighbour check.
