"""One process of a 2-process search on the CPU (``tests/test_devices.py``
starts two): ``python tests/multihost_case.py ADDRESS NUM_PROCESSES
PROCESS_ID WORKDIR``. Prints ``worker done`` on processes other than 0."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import experiments  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import common  # pylint: disable=wrong-import-position
from nas_jax import devices  # pylint: disable=wrong-import-position
from nas_jax import train  # pylint: disable=wrong-import-position

# The smoke search with whole-phase windows (as tests/multidevice_cases.py).
OVERRIDES = {"log_every": 4, "checkpoint_every": 4}


def main(address, num_processes, process_id, workdir):
  assert devices.initialize(address, int(num_processes), int(process_id))
  config = common.apply_overrides(experiments.get_config("smoke")[1],
                                  OVERRIDES)
  try:
    run = train.train_and_evaluate(config, workdir)
  except devices.WorkerDone:
    print("worker done", flush=True)
    return
  print("best", run.best["arch"], run.best["valid_ppl"], flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
