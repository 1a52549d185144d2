"""``random_ws``: random search with weight sharing on the ENAS budget.

The same loop as ENAS with no controller phase: the shared phase trains on
uniformly drawn cells (``--config.search.random_sampler=controller`` draws
them from the untrained controller instead, as the authors ran it), and the
derive phase keeps the best of ``derive.num_cells`` random cells.
"""

import os

from experiments import common
from nas_jax import files
from nas_jax import train
from nas_jax.analysis import search_report


def run(config, workdir):
  best = train.train_and_evaluate(config, workdir).best
  search_report.write_report(workdir, config)
  print(f"random_ws: {train.best_summary(best)} | report: "
        f"{os.path.join(workdir, files.REPORT_FILE)}", flush=True)
  return best


def get_config(preset: str = ""):
  config = common.search_config()
  common.multi_seed_budget(config)  # One enas_probe seed's budget.
  config.search.algorithm = "random_ws"
  return common.with_preset(config, preset)
