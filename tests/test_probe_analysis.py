"""probe_analysis.analyse gives the numbers of one correlate call per pair;
its report and figures show what they claim to."""

import os

import numpy as np
import pytest

from benchmarks import probe_stats
from experiments import common
from nas_jax import search_space
from nas_jax.analysis import edit_distance
from nas_jax.analysis import pairwise
from nas_jax.analysis import probe_analysis
from nas_jax.analysis import recency

from test_correlate_batch import _compare


@pytest.fixture(scope="module")
def analysed():
  """Synthetic probe data of 24 cells (two with infinite ppl), analysed."""
  args = probe_stats.parse_args(["--num-cells", "24", "--num-inf", "2",
                                 "--carry-dim", "8", "--seed", "3"])
  raw = probe_stats.synthetic_raw(args)
  p = common.probe_config()
  p.num_cells, p.num_permutations, p.num_bootstrap = 24, 49, 60
  p.ged_max_pairs, p.seed = 12, 3
  return raw, p, probe_analysis.analyse(raw, p, "synthetic")


def _one_call_per_pair(raw, arm, arm_res, p, pairs):
  """What probe_analysis computed before the batched path: one
  pairwise.correlate (or permuted_pairs_control) call per entry."""
  metrics, main_dist = arm_res["_matrices"], arm_res["_hidden_l2"]
  out = {}
  for carry in probe_analysis.CARRIES:
    x = probe_analysis._carry(raw, arm, carry)
    for kind in ("l2", "cosine"):
      full = (carry, kind) == ("h", "l2")
      dist = main_dist if full else probe_analysis._distance(x, kind)
      table = {}
      for name in probe_analysis.METRICS:
        kwargs = {}
        if name in probe_analysis.SUBSET_METRICS:
          known = np.isfinite(metrics[name][pairs[:, 0], pairs[:, 1]])
          kwargs["pairs"] = pairs[known]
        table[name] = pairwise.correlate(
            dist, metrics[name], num_permutations=p.num_permutations,
            num_bootstrap=p.num_bootstrap if full else 0, seed=p.seed,
            **kwargs)
      if full:
        ppl = raw[f"{arm}/ppl"]
        finite = np.isfinite(ppl)
        all_pairs = np.stack(pairwise.pairs_index(ppl.shape[0]), axis=1)
        keep = finite[all_pairs[:, 0]] & finite[all_pairs[:, 1]]
        table["abs_ppl_difference"] = pairwise.correlate(
            dist, probe_analysis._ppl_difference(ppl), pairs=all_pairs[keep],
            num_permutations=p.num_permutations,
            num_bootstrap=p.num_bootstrap, seed=p.seed)
      out[f"{carry}/{kind}"] = table
  return out


def test_correlations_equal_one_correlate_call_each(analysed):
  raw, p, results = analysed
  pairs = edit_distance.sample_pairs(24, p.ged_max_pairs, p.seed)
  for arm in probe_analysis.ARMS:
    arm_res = results["arms"][arm]
    ref = _one_call_per_pair(raw, arm, arm_res, p, pairs)
    assert list(arm_res["correlations"]) == list(ref)
    for key, table in ref.items():
      assert list(arm_res["correlations"][key]) == list(table)
      _compare(arm_res["correlations"][key], table, f"{arm}/{key}")


def test_permuted_control_equals_permuted_pairs_control(analysed):
  _, p, results = analysed
  trained = results["arms"]["trained"]
  assert "permuted" not in results["arms"]["untrained"]
  names = [n for n in probe_analysis.METRICS
           if n not in probe_analysis.SUBSET_METRICS]
  assert list(trained["permuted"]) == names
  for name in names:
    ref = pairwise.permuted_pairs_control(
        trained["_hidden_l2"], trained["_matrices"][name], seed=p.seed)
    assert ref["num_permutations"] == 999  # Its default, not the setting.
    _compare(trained["permuted"][name], ref, name)


def test_arm_keys_keep_their_order(analysed):
  """results.json's layout: the keys and their order are unchanged."""
  _, _, results = analysed
  assert list(results["arms"]["trained"]) == [
      "unique_cells", "ppl_median", "ppl_non_finite", "ged_timeouts",
      "correlations", "nearest_neighbour", "ridge", "permuted", "per_step",
      "recency", "_matrices", "_hidden_l2", "_properties"]


def test_carry_pca_equals_numpy_svd(analysed):
  """results["carry_pca"]: explained variance ratios and projection of
  scikit-learn's PCA are those of the SVD of the centred h (up to sign)."""
  raw, _, results = analysed
  for arm in probe_analysis.ARMS:
    h = raw[f"{arm}/h"].astype(np.float64)
    u, s, _ = np.linalg.svd(h - h.mean(0), full_matrices=False)
    res = results["carry_pca"][arm]
    n = min(probe_analysis.PCA_COMPONENTS, *h.shape)
    np.testing.assert_allclose(res["explained_variance_ratio"],
                               (s**2 / np.sum(s**2))[:n], rtol=1e-10)
    xy = res["_projection"]
    np.testing.assert_allclose(np.abs(xy), np.abs(u[:, :2] * s[:2]),
                               atol=1e-10)


@pytest.fixture(scope="module")
def written(analysed, tmp_path_factory):
  """write_outputs with a preface; every figure drawn, kept by file name."""
  from nas_jax.analysis import figures  # pylint: disable=g-import-not-at-top
  raw, _, results = analysed
  run_dir = str(tmp_path_factory.mktemp("probe_run"))
  drawn, save = {}, figures._save
  def keep(fig, fig_dir, name):
    drawn[name] = fig
    return save(fig, fig_dir, name)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(figures, "_save", keep)
    probe_analysis.write_outputs(results, raw, run_dir,
                                 preface="# The search\n\nSearch text.\n")
  report = open(os.path.join(run_dir, "report.md")).read()
  return run_dir, drawn, report


def _panels(fig):
  return [ax for ax in fig.axes if ax.axison and ax.get_label() !=
          "<colorbar>"]


def test_every_figure_written(written):
  run_dir, drawn, report = written
  fig_dir = os.path.join(run_dir, "figures")
  # K = 24 >= TSNE_MIN_CELLS: the t-SNE figure is drawn too.
  assert set(os.listdir(fig_dir)) == set(drawn) == {
      "hidden_distance_density.png", "hidden_vs_graph_metrics.png",
      "closest_farthest_pairs.png", "hidden_vs_ppl_difference.png",
      "hidden_pca.png", "hidden_tsne.png", "per_step_decisions.png"}
  for name in drawn:
    assert os.path.getsize(os.path.join(fig_dir, name)) > 0, name
    assert f"](figures/{name})" in report, name
  assert "t-SNE skipped" not in report


def test_scatter_one_panel_per_metric_with_rho_and_p(written, analysed):
  _, _, results = analysed
  panels = _panels(written[1]["hidden_vs_graph_metrics.png"])
  assert [ax.get_title().split(" ")[0] for ax in panels] == list(
      probe_analysis.METRICS)
  for ax, name in zip(panels, probe_analysis.METRICS):
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for arm, label in zip(probe_analysis.ARMS, labels):
      s = results["arms"][arm]["correlations"]["h/l2"][name]["spearman"]
      assert label.startswith(f"{arm}: rho {s['rho']:+.3f}, Mantel p "
                              f"{s['p_mantel']:.2g}"), label


def test_scatter_draws_only_metrics_with_values(analysed, tmp_path):
  """Edit distances with no value at any pair get no panel."""
  from nas_jax.analysis import figures  # pylint: disable=g-import-not-at-top
  raw, _, results = analysed
  arms = {}
  for arm, res in results["arms"].items():
    matrices = dict(res["_matrices"])
    matrices["labelled_ged"] = np.full_like(matrices["labelled_ged"], np.nan)
    del matrices["topological_ged"]
    arms[arm] = dict(res, _matrices=matrices)
  names = figures.scatter_metrics(dict(results, arms=arms))
  assert names == [n for n in probe_analysis.METRICS
                   if n not in probe_analysis.SUBSET_METRICS]
  assert figures.scatter(dict(results, arms=arms), raw, str(tmp_path))


def test_pca_axes_give_the_explained_variance_and_last_token(written,
                                                             analysed):
  raw, _, results = analysed
  panels = _panels(written[1]["hidden_pca.png"])
  ratio = results["carry_pca"]["trained"]["explained_variance_ratio"]
  for ax in panels:
    assert ax.get_xlabel() == f"PC 1 ({100 * ratio[0]:.1f}% of variance)"
    assert ax.get_ylabel() == f"PC 2 ({100 * ratio[1]:.1f}% of variance)"
  # The last panel: one colour per choice of the last token h read (2N-3).
  t = raw["trained/tokens"].shape[1]
  assert f"(token {t - 2})" in panels[-1].get_title()
  assert "not read the last activation" in panels[-1].get_title()
  choices = [int(x.get_text())
             for x in panels[-1].get_legend().get_texts()]
  assert choices == sorted(set(raw["trained/tokens"][:, t - 2].tolist()))


def test_per_step_lines_distinct_with_uniform_reference(written, analysed):
  raw, _, _ = analysed
  sizes = search_space.decision_sizes(
      search_space.num_nodes_from_tokens(raw["trained/tokens"].shape[1]))
  panels = _panels(written[1]["per_step_decisions.png"])
  for ax, uniform in zip(panels, (1.0 / sizes, np.log(sizes))):
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["uniform choice"].get_ydata(), uniform)
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker())
              for name, line in lines.items() if name != "uniform choice"}
    assert len(styles) == 4
    for arm in probe_analysis.ARMS:
      assert (lines[f"{arm}, random state"].get_zorder()
              > lines[f"{arm}, zero state"].get_zorder())


def test_report_header_and_preface(written, analysed):
  _, _, report = written
  _, _, results = analysed
  assert report.startswith("# The search\n\nSearch text.\n\n## Controller "
                           "probe\n")
  # With a preface the probe's headings move one level down.
  assert [line for line in report.splitlines()
          if line.startswith("# ")] == ["# The search"]
  assert "\n### Verdicts\n" in report
  assert "{'" not in report
  assert ("trained: 24 distinct of 24 sampled cells; untrained: 24 distinct "
          "of 24") in report
  assert "topological_ged: trained 0, untrained 0" in report
  ratio = results["carry_pca"]["trained"]["explained_variance_ratio"]
  assert f"trained {100 * ratio[0]:.1f}% and {100 * ratio[1]:.1f}%" in report


def test_report_notes_skipped_tsne(analysed):
  _, _, results = analysed
  names = {key: f"{key}.png" for key in ("density", "scatter", "pairs",
                                         "ppl", "pca", "steps")}
  report = probe_analysis._report(dict(results, num_cells=12),
                                  dict(names, tsne=None))
  assert report.startswith("# Controller probe\n")
  assert "t-SNE skipped: K = 12 cells, fewer than the 20" in report
  assert "tsne" not in report.replace("t-SNE", "")


def test_tsne_skipped_below_its_minimum(analysed, tmp_path):
  from nas_jax.analysis import figures  # pylint: disable=g-import-not-at-top
  raw, _, results = analysed
  k = figures.TSNE_MIN_CELLS - 1
  small = {key: (v[:k] if key.startswith(("trained/", "untrained/")) else v)
           for key, v in raw.items()}
  assert figures.tsne(results, small, str(tmp_path)) is None
  assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------
# Recency: a carry that holds only the last decision vs the whole prefix.


def _recency_raw(trained_carry, seed=0):
  """Synthetic probe data (60 cells of 6 nodes): the untrained carry holds
  only the last decision it read (an LSTM's recency); the trained one holds
  ``"last"`` the same, or ``"prefix"`` every read decision (one-hot each)."""
  args = probe_stats.parse_args(["--num-cells", "60", "--nodes", "6",
                                 "--num-inf", "0", "--seed", str(seed)])
  raw = probe_stats.synthetic_raw(args)
  rng = np.random.default_rng(seed)
  for arm in probe_analysis.ARMS:
    read = recency.read_tokens(raw[f"{arm}/tokens"])
    if arm == "trained" and trained_carry == "prefix":
      columns = read
    else:
      columns = read[:, -1:]
    one_hot = np.concatenate([np.eye(6)[col] for col in columns.T], axis=1)
    for carry in ("h", "c"):
      raw[f"{arm}/{carry}"] = one_hot + 0.01 * rng.normal(size=one_hot.shape)
  return raw


def _recency_results(trained_carry):
  p = common.probe_config()
  p.num_cells, p.num_permutations, p.num_bootstrap = 60, 999, 100
  p.ged_max_pairs = 10
  with probe_stats.stubbed_ged(True):
    return probe_analysis.analyse(_recency_raw(trained_carry), p, "synthetic")


def test_a_last_token_carry_passes_the_old_rule_but_not_the_recency_control():
  """The earlier rule counts structure for a carry that holds only the last
  decision; given that decision (Holm over 3 carries x 5 metrics) nothing
  is left, so the verdict supports claim 3."""
  results = _recency_results("last")
  verdicts = results["verdicts"]
  assert verdicts["claim3_raw"].startswith("Not supported")
  assert probe_analysis.recency_hits(results["arms"]["trained"]) == []
  assert verdicts["claim3"].startswith("Consistent with the claim")
  # The prefix without the last decision: the correlation is gone too.
  row = results["arms"]["trained"]["recency"]["h/l2"]["aligned_edit_distance"]
  assert abs(row["prefix_k1"]["rho"]) < 0.1
  assert row["given_last_decision"]["p_holm"] > 0.05


def test_a_whole_prefix_carry_passes_the_recency_control():
  """A carry that holds every read decision keeps its correlation given the
  last one, for the trained controller only: the verdict rejects claim 3."""
  results = _recency_results("prefix")
  trained = results["arms"]["trained"]
  hits = probe_analysis.recency_hits(trained)
  assert ("h/l2", "aligned_edit_distance") in hits
  assert probe_analysis.recency_hits(results["arms"]["untrained"]) == []
  assert results["verdicts"]["claim3"].startswith("Not supported here")
  row = trained["recency"]["h/l2"]["aligned_edit_distance"]
  assert row["prefix_k1"]["rho"] > 0.3 and row["prefix_k1"]["p_mantel"] < 0.01
  # Holm adjusts over the 15 tests of each controller: never below the raw p.
  tests = [trained["recency"][v][n]["given_last_decision"]
           for v in probe_analysis.RECENCY_VIEWS
           for n in probe_analysis.WHOLE_METRICS]
  assert len(tests) == 15
  assert all(t["p_holm"] >= t["p_mantel"] for t in tests)


def test_claim4_compares_the_policy_conditioning_of_both_controllers():
  """Claim 4's verdict: trained vs untrained mean KL at distance >= 2."""
  raw = _recency_raw("last")
  positions = np.array([0, 2, 3, 4, 5, 6, 7, 8, 9])
  steps = raw["trained/tokens"].shape[1]
  dist = np.arange(steps)[None, :] - positions[:, None]
  rng = np.random.default_rng(1)

  def kl(scale_far):
    base = np.where(dist == 1, 1e-3, np.where(dist >= 2, scale_far, np.nan))
    return base[None] * rng.uniform(0.5, 1.5, size=(60, *dist.shape))

  raw["conditioning_positions"] = positions
  raw["untrained/conditioning_kl"] = kl(1e-7)
  p = common.probe_config()
  p.num_cells, p.num_permutations, p.num_bootstrap = 60, 49, 50
  p.ged_max_pairs = 10
  for far, start in ((1e-4, "Not supported here"),
                     (1e-7, "Consistent with the claim")):
    raw["trained/conditioning_kl"] = kl(far)
    with probe_stats.stubbed_ged(True):
      results = probe_analysis.analyse(raw, p, "synthetic")
    assert results["verdicts"]["claim4"].startswith(start), far
    trained = results["arms"]["trained"]["conditioning"]
    assert trained["beyond_last_mean"] == pytest.approx(far, rel=0.2)
    assert trained["curve"]["distance"][0] == 1


def test_claim3_says_when_holm_cannot_reach_alpha(analysed):
  """49 permutations: the smallest Holm-adjusted p of 15 tests is 0.3, so
  the verdict says the test cannot reject instead of 'consistent'."""
  _, p, results = analysed
  assert p.num_permutations == 49
  assert results["verdicts"]["claim3"].startswith("Not testable")
  assert "0.3" in results["verdicts"]["claim3"]
