"""Word-level language-modelling corpora (Penn Treebank and friends).

A corpus directory holds either ``train.txt``, ``valid.txt`` and ``test.txt``
(the PTB layout), or a single ``input.txt`` (e.g. Tiny Shakespeare), which is
split by lines into train / valid / test by fraction. When the directory has a
``SHA256SUMS`` file, every file it lists is checked before anything is read.

Each non-empty line is split on whitespace and ends with an ``<eos>`` token.
The vocabulary comes from the training text in order of first appearance; a
validation or test word outside it maps to ``<unk>`` (added to the vocabulary
only when the training text lacks it and such words exist). PTB needs neither:
its vocabulary is exactly 10,000 and valid/test stay inside it.

Batches follow the PyTorch/ENAS convention: the id stream is cut into ``B``
contiguous columns (``batchify``), and a BPTT window at row ``position`` gives
``inputs = data[position : position + T]`` and the targets one row later
(:func:`window`, the one implementation every part of the code uses).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")
SINGLE_FILE = "input.txt"
CHECKSUMS = "SHA256SUMS"
# Penn Treebank as shipped inside the package (package data), so it is found
# from any working directory and in a non-editable install too.
BUNDLED_PTB_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "corpora", "ptb")


class DataError(ValueError):
  """A corpus directory is missing, incomplete, altered or unreadable."""


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
  """Token ids of the three splits and the vocabulary that made them.

  Compared by identity (``==`` on numpy arrays is elementwise).
  """
  vocab: tuple[str, ...]
  train: np.ndarray  # int32[num_train_tokens]
  valid: np.ndarray  # int32[num_valid_tokens]
  test: np.ndarray  # int32[num_test_tokens]

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def split(self, name: str) -> np.ndarray:
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; valid splits: {', '.join(SPLITS)}")
    return getattr(self, name)

  def decode(self, ids) -> list[str]:
    return [self.vocab[int(i)] for i in np.asarray(ids).reshape(-1)]


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def verify_checksums(data_dir: str) -> list[str]:
  """Checks every file listed in ``data_dir/SHA256SUMS``.

  Returns the verified file names (empty when there is no ``SHA256SUMS``).

  Raises:
    DataError: naming the first missing or altered file.
  """
  sums_path = os.path.join(data_dir, CHECKSUMS)
  if not os.path.exists(sums_path):
    return []
  verified = []
  with open(sums_path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      line = line.strip()
      if not line or line.startswith("#"):
        continue
      parts = line.split(maxsplit=1)
      if len(parts) != 2 or len(parts[0]) != 64:
        raise DataError(f"{sums_path}:{lineno}: not a 'sha256  filename' line")
      expected, name = parts[0].lower(), parts[1].lstrip("*").strip()
      path = os.path.join(data_dir, name)
      if not os.path.isfile(path):
        raise DataError(f"{path}: listed in {CHECKSUMS} but missing")
      actual = _sha256(path)
      if actual != expected:
        raise DataError(
            f"{path}: checksum mismatch (file truncated or altered?): "
            f"sha256 {actual}, {CHECKSUMS} says {expected}")
      verified.append(name)
  return verified


def _read_lines(path: str) -> list[list[str]]:
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text ({e})") from None
  return [line.split() for line in text.split("\n") if line.strip()]


def _tokens(lines: list[list[str]]) -> list[str]:
  out = []
  for words in lines:
    out.extend(words)
    out.append(EOS)
  return out


def _split_lines(lines, fractions):
  n = len(lines)
  n_train = int(round(fractions[0] * n))
  n_valid = int(round(fractions[1] * n))
  return lines[:n_train], lines[n_train:n_train + n_valid], lines[n_train + n_valid:]


def load_corpus(data_dir: str, *, verify: bool = True,
                split_fractions: tuple[float, float, float] = (0.9, 0.05, 0.05)
                ) -> Corpus:
  """Reads and tokenises a corpus directory.

  Args:
    data_dir: a directory with ``train.txt``/``valid.txt``/``test.txt`` or a
      single ``input.txt``.
    verify: check ``SHA256SUMS`` when present.
    split_fractions: line fractions for train/valid/test, used only for a
      single-file corpus (contiguous blocks, in file order).

  Raises:
    DataError: the directory or a file is missing, a checksum fails, or a split
      is empty; the message names the file.
  """
  if not os.path.isdir(data_dir):
    raise DataError(f"{data_dir}: data directory not found")
  if verify:
    verify_checksums(data_dir)

  split_paths = [os.path.join(data_dir, f"{s}.txt") for s in SPLITS]
  single = os.path.join(data_dir, SINGLE_FILE)
  if all(os.path.isfile(p) for p in split_paths):
    lines = [_read_lines(p) for p in split_paths]
    sources = split_paths
  elif os.path.isfile(single) and not any(os.path.isfile(p) for p in split_paths):
    if len(split_fractions) != 3 or any(f <= 0 for f in split_fractions) or (
        abs(sum(split_fractions) - 1.0) > 1e-6):
      raise ValueError(
          f"split_fractions must be three positive numbers summing to 1, got "
          f"{split_fractions}")
    lines = list(_split_lines(_read_lines(single), split_fractions))
    sources = [f"{single} ({s} part)" for s in SPLITS]
  else:
    missing = [p for p in split_paths if not os.path.isfile(p)]
    raise DataError(
        f"{missing[0]}: missing (a corpus directory holds train.txt, valid.txt "
        f"and test.txt, or a single {SINGLE_FILE})")

  tokens = [_tokens(l) for l in lines]
  for source, toks in zip(sources, tokens):
    if not toks:
      raise DataError(f"{source}: no text")

  word_to_id: dict[str, int] = {}
  for w in tokens[0]:
    if w not in word_to_id:
      word_to_id[w] = len(word_to_id)
  oov = any(w not in word_to_id for toks in tokens[1:] for w in toks)
  if oov and UNK not in word_to_id:
    word_to_id[UNK] = len(word_to_id)
  unk = word_to_id.get(UNK, -1)

  def ids(toks):
    return np.fromiter((word_to_id.get(w, unk) for w in toks), dtype=np.int32,
                       count=len(toks))

  vocab = tuple(word_to_id)
  return Corpus(vocab=vocab, train=ids(tokens[0]), valid=ids(tokens[1]),
                test=ids(tokens[2]))


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
  """Cuts a token stream into ``batch_size`` contiguous columns.

  Returns ``int32[L, B]`` with ``L = len(ids) // B``; column ``b`` is the
  ``b``-th contiguous chunk of the stream and the tail that does not fill a
  row is dropped (the PyTorch word-language-model convention).
  """
  ids = np.asarray(ids)
  if ids.ndim != 1:
    raise ValueError(f"batchify expects a 1-D token stream, got shape {ids.shape}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  rows = ids.shape[0] // batch_size
  if rows < 2:
    raise ValueError(
        f"{ids.shape[0]} tokens are too few for batch size {batch_size}: each "
        f"column needs at least 2 tokens (an input and its target)")
  return np.ascontiguousarray(
      ids[:rows * batch_size].reshape(batch_size, rows).T.astype(np.int32))


def window(data_2d, pos, bptt: int):
  """``(inputs, targets)``, each ``[T, B]``: rows ``pos .. pos + T - 1`` of
  ``data_2d [L, B]`` and the rows one later.

  The one BPTT window of the codebase (training, controller rewards, exact
  evaluation, the probe). Its shape is fixed, so one compiled program serves
  every window, and ``pos`` may be traced. The caller keeps
  ``pos + bptt + 1 <= L``: training pointers wrap with :func:`next_position`,
  evaluation pads with :func:`pad_rows` and masks the rows past
  :func:`windows`' lengths (``dynamic_slice`` would otherwise clamp ``pos``).
  """
  block = jax.lax.dynamic_slice_in_dim(jnp.asarray(data_2d), pos, bptt + 1,
                                       axis=0)
  return block[:-1], block[1:]


def next_position(pos, bptt: int, rows: int):
  """The start after the window at ``pos``: ``pos + bptt``, or 0 once a full
  window no longer fits in ``rows`` rows (train and reward pointers wrap)."""
  pos = pos + bptt
  return jnp.where(pos + bptt + 1 > rows, 0, pos)


def windows(rows: int, bptt: int, max_windows: int = 0
            ) -> list[tuple[int, int]]:
  """``(start, length)`` of the consecutive windows over ``rows`` rows that
  see every target row once (exact evaluation): starts ``0, T, 2T, ...``,
  the last window shorter when ``rows - 1`` is not a multiple of ``T``.
  ``max_windows > 0`` keeps only the first ones.
  """
  if bptt < 1:
    raise ValueError(f"bptt must be >= 1, got {bptt}")
  if rows < 2:
    raise ValueError(f"{rows} rows hold no target row: need at least 2")
  targets = rows - 1
  if max_windows > 0:
    targets = min(targets, max_windows * bptt)
  return [(start, min(bptt, targets - start))
          for start in range(0, targets, bptt)]


def pad_rows(data_2d: np.ndarray, bptt: int) -> np.ndarray:
  """``data_2d`` with ``bptt`` zero rows appended, so that the :func:`window`
  of every start in :func:`windows` fits (the padded targets are masked)."""
  pad = np.zeros((bptt, data_2d.shape[1]), data_2d.dtype)
  return np.concatenate([data_2d, pad])
