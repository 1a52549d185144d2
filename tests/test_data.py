"""Tests for nas_jax.data: corpus loading, checksums, batchify and BPTT windows."""

import os
import shutil
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nas_jax import data

REPO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PTB_DIR = os.path.join(REPO_ROOT, "nas_jax", "corpora", "ptb")
# DESIGN.md: the shared data lives at ../shared/data/ relative to the repo.
SHAKESPEARE_DIR = os.path.join(REPO_ROOT, "..", "shared", "data",
                               "tinyshakespeare")

PTB_TRAIN_TOKENS = 929_589
PTB_VALID_TOKENS = 73_760
PTB_TEST_TOKENS = 82_430
PTB_VOCAB_SIZE = 10_000
PTB_TRAIN_LINES = 42_068


# ---------------------------------------------------------------------------
# Fixtures and helpers.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ptb():
  """The bundled PTB corpus, loaded (and checksummed) once per module."""
  return data.load_corpus(PTB_DIR)


@pytest.fixture
def ptb_copy(tmp_path):
  """A writable copy of the PTB directory, including its SHA256SUMS."""
  dst = tmp_path / "ptb"
  shutil.copytree(PTB_DIR, dst)
  os.chmod(dst, stat.S_IRWXU)
  for name in os.listdir(dst):
    os.chmod(dst / name, stat.S_IRUSR | stat.S_IWUSR)
  return dst


@pytest.fixture(scope="module")
def shakespeare():
  """Tiny Shakespeare, raw text and loaded corpus; skipped when absent."""
  if not os.path.isdir(SHAKESPEARE_DIR):
    pytest.skip(f"{SHAKESPEARE_DIR} not present")
  with open(os.path.join(SHAKESPEARE_DIR, data.SINGLE_FILE),
            encoding="utf-8") as f:
    text = f.read()
  return text, data.load_corpus(SHAKESPEARE_DIR)


def _write_splits(directory, train, valid, test):
  """Writes a train/valid/test corpus directory without SHA256SUMS."""
  directory.mkdir()
  for name, text in (("train", train), ("valid", valid), ("test", test)):
    (directory / f"{name}.txt").write_text(text, encoding="utf-8")
  return directory


# ---------------------------------------------------------------------------
# The bundled Penn Treebank.
# ---------------------------------------------------------------------------


def test_ptb_token_counts(ptb):
  """PTB splits have exactly the published token counts (with <eos>)."""
  assert (len(ptb.train), len(ptb.valid), len(ptb.test)) == (
      PTB_TRAIN_TOKENS, PTB_VALID_TOKENS, PTB_TEST_TOKENS)


def test_ptb_vocab_size(ptb):
  """PTB vocabulary has exactly 10,000 words."""
  assert ptb.vocab_size == PTB_VOCAB_SIZE
  assert len(set(ptb.vocab)) == PTB_VOCAB_SIZE


def test_ptb_eos_once_per_train_line(ptb):
  """The train split has one <eos> per line of train.txt (42,068)."""
  eos = ptb.vocab.index(data.EOS)
  assert int(np.sum(ptb.train == eos)) == PTB_TRAIN_LINES
  assert ptb.train[-1] == eos


def test_ptb_ids_are_int32_in_range(ptb):
  """Every split holds int32 ids within [0, vocab_size)."""
  for name in data.SPLITS:
    ids = ptb.split(name)
    assert ids.dtype == np.int32, name
    assert ids.min() >= 0 and ids.max() < ptb.vocab_size, name


# ---------------------------------------------------------------------------
# Checksums and missing files.
# ---------------------------------------------------------------------------


def test_checksum_missing_file_names_it(ptb_copy):
  """A file listed in SHA256SUMS but missing raises DataError naming it."""
  os.remove(ptb_copy / "valid.txt")
  with pytest.raises(data.DataError, match="valid.txt"):
    data.load_corpus(str(ptb_copy))


def test_checksum_truncated_file_names_it(ptb_copy):
  """A truncated file fails its checksum with a DataError naming it."""
  path = ptb_copy / "test.txt"
  content = path.read_bytes()
  path.write_bytes(content[:len(content) // 2])
  with pytest.raises(data.DataError, match="test.txt"):
    data.load_corpus(str(ptb_copy))


def test_checksum_altered_byte_names_it(ptb_copy):
  """Changing a single byte fails the checksum with a DataError naming it."""
  path = ptb_copy / "valid.txt"
  content = bytearray(path.read_bytes())
  content[1000] = ord("x") if content[1000] != ord("x") else ord("y")
  path.write_bytes(bytes(content))
  with pytest.raises(data.DataError, match="valid.txt") as excinfo:
    data.load_corpus(str(ptb_copy))
  assert "checksum" in str(excinfo.value)


def test_missing_data_directory_names_it(tmp_path):
  """A data directory that does not exist raises DataError naming it."""
  missing = tmp_path / "no_such_corpus"
  with pytest.raises(data.DataError, match="no_such_corpus"):
    data.load_corpus(str(missing))


def test_verify_false_skips_checksums(ptb_copy):
  """With verify=False an altered (but well-formed) file still loads."""
  path = ptb_copy / "test.txt"
  content = path.read_bytes()
  path.write_bytes(content.replace(b" the ", b" a ", 1))
  with pytest.raises(data.DataError):
    data.load_corpus(str(ptb_copy))
  corpus = data.load_corpus(str(ptb_copy), verify=False)
  assert len(corpus.test) == PTB_TEST_TOKENS


# ---------------------------------------------------------------------------
# Hand-written train/valid/test corpora (no SHA256SUMS).
# ---------------------------------------------------------------------------


def test_vocab_in_order_of_first_appearance(tmp_path):
  """Vocabulary is the train words in first-appearance order, <eos> included."""
  d = _write_splits(tmp_path / "c", "b a b\nc a\n", "a\n", "c\n")
  corpus = data.load_corpus(str(d))
  assert corpus.vocab == ("b", "a", "<eos>", "c")


def test_eos_at_line_ends_and_blank_lines_skipped(tmp_path):
  """Each non-empty line ends in <eos>; blank/whitespace lines add nothing."""
  d = _write_splits(tmp_path / "c", "x y\n\n   \nz\n\n", "y\n\ny x\n",
                    "\nz z\n")
  corpus = data.load_corpus(str(d))
  assert corpus.vocab == ("x", "y", "<eos>", "z")
  np.testing.assert_array_equal(corpus.train, [0, 1, 2, 3, 2])
  np.testing.assert_array_equal(corpus.valid, [1, 2, 1, 0, 2])
  np.testing.assert_array_equal(corpus.test, [3, 3, 2])


def test_oov_maps_to_added_unk(tmp_path):
  """OOV valid/test words map to <unk>, appended when train lacks it."""
  d = _write_splits(tmp_path / "c", "a b\nb c\n", "a zz\n", "yy c\n")
  corpus = data.load_corpus(str(d))
  assert corpus.vocab == ("a", "b", "<eos>", "c", "<unk>")
  np.testing.assert_array_equal(corpus.train, [0, 1, 2, 1, 3, 2])
  np.testing.assert_array_equal(corpus.valid, [0, 4, 2])
  np.testing.assert_array_equal(corpus.test, [4, 3, 2])


def test_oov_uses_existing_unk(tmp_path):
  """When train already has <unk>, OOV words use its id and none is added."""
  d = _write_splits(tmp_path / "c", "a <unk>\nb\n", "zz b\n", "a yy\n")
  corpus = data.load_corpus(str(d))
  assert corpus.vocab == ("a", "<unk>", "<eos>", "b")
  np.testing.assert_array_equal(corpus.valid, [1, 3, 2])
  np.testing.assert_array_equal(corpus.test, [0, 1, 2])


def test_no_unk_added_without_oov(tmp_path):
  """Without OOV words in valid/test, <unk> is not added to the vocabulary."""
  d = _write_splits(tmp_path / "c", "a b\n", "b a\n", "a\n")
  corpus = data.load_corpus(str(d))
  assert data.UNK not in corpus.vocab
  assert corpus.vocab_size == 3


def test_missing_split_file_names_it(tmp_path):
  """Without SHA256SUMS, a missing split file raises DataError naming it."""
  d = _write_splits(tmp_path / "c", "a\n", "a\n", "a\n")
  os.remove(d / "test.txt")
  with pytest.raises(data.DataError, match="test.txt"):
    data.load_corpus(str(d))


# ---------------------------------------------------------------------------
# Single-file corpora (input.txt).
# ---------------------------------------------------------------------------

# Ten non-empty lines and one blank line: 6 / 2 / 2 lines at (0.6, 0.2, 0.2).
_SINGLE_FILE_TEXT = ("a b\nc\na\n\nd e\nb\nf\n"  # train (blank line skipped)
                     "c a\nf\n"  # valid
                     "e\nd b\n")  # test


def test_single_file_split_by_lines(tmp_path):
  """input.txt is split into contiguous line blocks by split_fractions."""
  d = tmp_path / "single"
  d.mkdir()
  (d / data.SINGLE_FILE).write_text(_SINGLE_FILE_TEXT, encoding="utf-8")
  corpus = data.load_corpus(str(d), split_fractions=(0.6, 0.2, 0.2))
  assert corpus.vocab == ("a", "b", "<eos>", "c", "d", "e", "f")
  np.testing.assert_array_equal(
      corpus.train, [0, 1, 2, 3, 2, 0, 2, 4, 5, 2, 1, 2, 6, 2])
  np.testing.assert_array_equal(corpus.valid, [3, 0, 2, 6, 2])
  np.testing.assert_array_equal(corpus.test, [5, 2, 4, 1, 2])


def test_single_file_bad_fractions_raise(tmp_path):
  """split_fractions that do not sum to 1 raise ValueError."""
  d = tmp_path / "single"
  d.mkdir()
  (d / data.SINGLE_FILE).write_text(_SINGLE_FILE_TEXT, encoding="utf-8")
  with pytest.raises(ValueError, match="split_fractions"):
    data.load_corpus(str(d), split_fractions=(0.6, 0.2, 0.3))


def test_shakespeare_checksum_passes():
  """The shared Tiny Shakespeare input.txt matches its SHA256SUMS."""
  if not os.path.isdir(SHAKESPEARE_DIR):
    pytest.skip(f"{SHAKESPEARE_DIR} not present")
  assert data.verify_checksums(SHAKESPEARE_DIR) == [data.SINGLE_FILE]


def test_shakespeare_splits_cover_all_tokens(shakespeare):
  """Shakespeare splits are non-empty and hold every word plus one <eos>/line."""
  text, corpus = shakespeare
  lengths = [len(corpus.split(name)) for name in data.SPLITS]
  assert all(n > 0 for n in lengths), lengths
  num_words = len(text.split())
  num_lines = sum(1 for line in text.splitlines() if line.strip())
  assert sum(lengths) == num_words + num_lines


# ---------------------------------------------------------------------------
# batchify.
# ---------------------------------------------------------------------------


def test_batchify_shape_and_dtype():
  """batchify gives int32[len // B, B]."""
  out = data.batchify(np.arange(23), 4)
  assert out.shape == (5, 4)
  assert out.dtype == np.int32


def test_batchify_columns_are_contiguous_chunks():
  """Column b is the b-th contiguous chunk of the stream; the tail is dropped."""
  ids = np.arange(100, 123)
  out = data.batchify(ids, 4)
  for b in range(4):
    np.testing.assert_array_equal(out[:, b], ids[5 * b:5 * b + 5])
  assert not np.isin(ids[20:], out).any()


def test_batchify_too_few_tokens_raises():
  """Fewer than 2 rows' worth of tokens raises ValueError."""
  with pytest.raises(ValueError, match="too few"):
    data.batchify(np.arange(7), 4)


# ---------------------------------------------------------------------------
# BPTT windows: window, windows, next_position, pad_rows.
# ---------------------------------------------------------------------------

_ROWS = 11  # 10 usable target rows.


@pytest.fixture
def batched():
  """int32[11, 3] batchified data with distinct values."""
  return data.batchify(np.arange(_ROWS * 3) + 7, 3)


def _eval_windows(batched, bptt, max_windows=0):
  """``(start, inputs, targets)`` of the exact-evaluation windows, cut to
  their lengths (the padded rows dropped)."""
  padded = data.pad_rows(batched, bptt)
  out = []
  for start, n in data.windows(batched.shape[0], bptt, max_windows):
    inputs, targets = data.window(padded, start, bptt)
    out.append((start, np.asarray(inputs)[:n], np.asarray(targets)[:n]))
  return out


def test_targets_are_inputs_shifted_by_one_row(batched):
  """Each window's targets are the rows right after its inputs."""
  for start, inputs, targets in _eval_windows(batched, 3):
    n = inputs.shape[0]
    np.testing.assert_array_equal(inputs, batched[start:start + n])
    np.testing.assert_array_equal(targets, batched[start + 1:start + 1 + n])


def test_windows_cover_every_target_row_once(batched):
  """Evaluation windows are contiguous and cover all target rows once."""
  spans = data.windows(batched.shape[0], 3)
  assert [s for s, _ in spans] == [0, 3, 6, 9]
  assert [n for _, n in spans] == [3, 3, 3, 1]
  targets = np.concatenate([t for _, _, t in _eval_windows(batched, 3)])
  np.testing.assert_array_equal(targets, batched[1:])


def test_max_windows_keeps_the_first_windows(batched):
  """``max_windows`` keeps the first windows only; 0 keeps them all."""
  assert data.windows(batched.shape[0], 3, max_windows=2) == [(0, 3), (3, 3)]
  assert data.windows(batched.shape[0], 3, max_windows=9) == data.windows(
      batched.shape[0], 3)


def test_window_has_a_fixed_shape_and_a_traced_position(batched):
  """The same window from a host int and from a traced position under jit."""
  host = data.window(batched, 4, 3)
  traced = jax.jit(lambda pos: data.window(batched, pos, 3))(jnp.int32(4))
  for a, b in zip(host, traced):
    assert a.shape == (3, 3)
    np.testing.assert_array_equal(a, b)


def test_next_position_wraps_when_a_full_window_no_longer_fits():
  """11 rows, bptt 3: starts 0, 3, 6; 9 + 4 > 11 wraps to 0."""
  positions = [0]
  for _ in range(4):
    positions.append(int(data.next_position(positions[-1], 3, _ROWS)))
  assert positions == [0, 3, 6, 0, 3]


def test_pad_rows_appends_bptt_zero_rows(batched):
  padded = data.pad_rows(batched, 4)
  assert padded.shape == (_ROWS + 4, 3) and padded.dtype == batched.dtype
  np.testing.assert_array_equal(padded[:_ROWS], batched)
  assert not padded[_ROWS:].any()


@pytest.mark.parametrize("bptt", [0, -1])
def test_bad_bptt_raises(bptt):
  """windows rejects bptt < 1."""
  with pytest.raises(ValueError, match="bptt"):
    data.windows(10, bptt)


def test_too_few_rows_raise():
  """One row holds no target: windows refuses it."""
  with pytest.raises(ValueError, match="rows"):
    data.windows(1, 3)
