"""Tests that the package installs, editable or not, with its bundled PTB.

Each install goes into a fresh virtual environment that also sees the running
environment's packages (JAX and the rest, pip, and setuptools/wheel for the
build), and pip runs with ``--no-deps --no-build-isolation --no-index``, so
nothing is downloaded. Both installs build from a copy of the repository: a
non-editable build writes ``build/`` and ``*.egg-info`` into the tree it builds.
"""

import json
import os
import shutil
import site
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Left out of the copy: history, run output, environments and build output.
_IGNORE = shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info",
                                 "__pycache__", "*.pyc", ".venv*", "venv",
                                 "ci-venv")
PTB_FILES = ("README.md", "SHA256SUMS", "train.txt", "valid.txt", "test.txt")
PTB_TRAIN_TOKENS = 929_589
PTB_VOCAB_SIZE = 10_000

# Run in the new environment from an empty directory, so that nothing is
# imported from a source tree by accident.
_PROBE = """
import json
import sys
import nas_jax
import nas_jax.analysis
from nas_jax import data
out = {"file": nas_jax.__file__, "ptb": data.BUNDLED_PTB_DIR}
if "--load" in sys.argv:
  corpus = data.load_corpus(data.BUNDLED_PTB_DIR)
  out.update(train=len(corpus.train), vocab=len(corpus.vocab))
print(json.dumps(out))
"""


def _run(args, **kwargs):
  """Runs ``args`` without PYTHONPATH (it could put a source tree first)."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  return subprocess.run(args, env=env, capture_output=True, text=True,
                        check=False, **kwargs)


def _make_venv(path):
  """Makes a venv that also sees this environment's site-packages.

  ``--system-site-packages`` alone would show the base interpreter's packages,
  not those of the venv running the tests, so a ``.pth`` file adds this
  environment's site directories (after the new venv's own, which win).

  Returns:
    (python, site_packages) of the new venv.
  """
  result = _run([sys.executable, "-m", "venv", "--without-pip",
                 "--system-site-packages", str(path)])
  assert result.returncode == 0, result.stderr
  python = str(path / "bin" / "python")
  result = _run([python, "-c",
                 "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
  assert result.returncode == 0, result.stderr
  site_packages = result.stdout.strip()
  # addsitedir also runs this environment's .pth files (setuptools' distutils
  # shim among them), as at this interpreter's start.
  lines = [f"import site; site.addsitedir({p!r})"
           for p in site.getsitepackages() if os.path.isdir(p)]
  with open(os.path.join(site_packages, "_parent_env.pth"), "w",
            encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return python, site_packages


def _pip_install(python, *args):
  result = _run([python, "-m", "pip", "install", "--no-deps",
                 "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", *args])
  assert result.returncode == 0, (
      "pip install failed (with setuptools <70.1 the build also needs "
      "`wheel`, which requirements.txt installs):\n"
      + result.stdout + result.stderr)


def _probe(python, cwd, *args):
  result = _run([python, "-c", _PROBE, *args], cwd=cwd)
  assert result.returncode == 0, result.stdout + result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def _inside(path, folder):
  path, folder = os.path.realpath(path), os.path.realpath(folder)
  return os.path.commonpath([path, folder]) == folder


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A copy of the repository to build from."""
  dst = tmp_path_factory.mktemp("source") / "nas_jax"
  shutil.copytree(REPO_ROOT, dst, ignore=_IGNORE)
  return dst


def test_editable_install_imports_from_the_source_tree(source, tmp_path):
  """`pip install -e .`: importable anywhere; modules and PTB in the tree."""
  python, site_packages = _make_venv(tmp_path / "venv")
  _pip_install(python, "-e", str(source))
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  out = _probe(python, cwd)
  assert _inside(out["file"], source / "nas_jax")
  assert not _inside(out["file"], site_packages)
  assert os.path.samefile(out["ptb"], source / "nas_jax" / "corpora" / "ptb")
  assert os.path.isfile(os.path.join(out["ptb"], "train.txt"))


def test_install_bundles_ptb(source, tmp_path):
  """`pip install .`: the package and the checksummed PTB in site-packages."""
  python, site_packages = _make_venv(tmp_path / "venv")
  _pip_install(python, str(source))
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  out = _probe(python, cwd, "--load")
  assert _inside(out["file"], os.path.join(site_packages, "nas_jax"))
  assert _inside(out["ptb"], site_packages)
  assert sorted(os.listdir(out["ptb"])) == sorted(PTB_FILES)
  # load_corpus checked every file against SHA256SUMS before reading it.
  assert out["train"] == PTB_TRAIN_TOKENS
  assert out["vocab"] == PTB_VOCAB_SIZE
  # Only the library is installed, not the repository's scripts.
  installed = set(os.listdir(site_packages))
  assert not installed & {"experiments", "benchmarks", "tests", "launch.py"}
