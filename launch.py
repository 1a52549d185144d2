"""Entry point: ``python launch.py --experiment=NAME [--workdir=DIR]``.

Only parses flags and hands over to the experiment; all logic lives in the
``nas_jax`` library and the ``experiments`` package.
"""

import sys

from absl import app
from absl import flags

import experiments

_EXPERIMENT = flags.DEFINE_string(
    "experiment", None, "Name of the experiment to run.", required=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: a new one under runs/).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    experiment = experiments.get_experiment(_EXPERIMENT.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return experiment.main(_WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
