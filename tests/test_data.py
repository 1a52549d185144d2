"""Tests for nas_jax.data: corpus loading, checksums, batchify and BPTT windows."""

import os
import shutil
import stat

import numpy as np
import pytest

from nas_jax import data

REPO_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PTB_DIR = os.path.join(REPO_ROOT, "data", "ptb")
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


def _batch_key(batch):
  """A hashable, comparable form of a Batch."""
  return (batch.position, batch.inputs.tolist(), batch.targets.tolist())


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
# BPTT windows: get_batch, iterate_bptt, num_windows.
# ---------------------------------------------------------------------------

_ROWS = 11  # 10 usable target rows.


@pytest.fixture
def batched():
  """int32[11, 3] batchified data with distinct values."""
  return data.batchify(np.arange(_ROWS * 3) + 7, 3)


def test_targets_are_inputs_shifted_by_one_row(batched):
  """Each window's targets are the rows right after its inputs."""
  for batch in data.iterate_bptt(batched, 3):
    n = batch.inputs.shape[0]
    np.testing.assert_array_equal(
        batch.inputs, batched[batch.position:batch.position + n])
    np.testing.assert_array_equal(
        batch.targets, batched[batch.position + 1:batch.position + 1 + n])


def test_windows_cover_every_target_row_once(batched):
  """Without drop_last, windows are contiguous and cover all target rows once."""
  batches = list(data.iterate_bptt(batched, 3))
  assert [b.position for b in batches] == [0, 3, 6, 9]
  assert [b.inputs.shape[0] for b in batches] == [3, 3, 3, 1]
  targets = np.concatenate([b.targets for b in batches])
  np.testing.assert_array_equal(targets, batched[1:])


def test_drop_last_yields_only_full_windows(batched):
  """With drop_last=True, only full-length windows are yielded."""
  batches = list(data.iterate_bptt(batched, 3, drop_last=True))
  assert [b.position for b in batches] == [0, 3, 6]
  assert all(b.inputs.shape == (3, 3) for b in batches)
  assert all(b.targets.shape == (3, 3) for b in batches)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_resume_from_boundary_gives_suffix(batched, index):
  """Starting at a window boundary yields exactly the remaining windows."""
  full = [_batch_key(b) for b in data.iterate_bptt(batched, 3)]
  start = full[index][0]
  resumed = [_batch_key(b) for b in data.iterate_bptt(batched, 3, start=start)]
  assert resumed == full[index:]


def test_iteration_is_deterministic(batched):
  """Two iterations over the same data give identical batches."""
  first = [_batch_key(b) for b in data.iterate_bptt(batched, 4)]
  second = [_batch_key(b) for b in data.iterate_bptt(batched, 4)]
  assert first == second


@pytest.mark.parametrize("start", [-1, _ROWS])
def test_iterate_out_of_range_start_raises(batched, start):
  """A start outside 0..rows-1 raises ValueError at the call, not later."""
  with pytest.raises(ValueError, match="out of range"):
    data.iterate_bptt(batched, 3, start=start)


@pytest.mark.parametrize("position", [-1, _ROWS - 1, _ROWS])
def test_get_batch_out_of_range_position_raises(batched, position):
  """get_batch rejects positions with no target row (outside 0..rows-2)."""
  with pytest.raises(ValueError, match="out of range"):
    data.get_batch(batched, position, 3)


@pytest.mark.parametrize("bptt", [1, 3, 5, 10, 20])
@pytest.mark.parametrize("drop_last", [False, True])
def test_num_windows_matches_iteration(batched, bptt, drop_last):
  """num_windows equals the number of batches iterate_bptt yields from 0."""
  count = sum(1 for _ in data.iterate_bptt(batched, bptt, drop_last=drop_last))
  assert data.num_windows(batched, bptt, drop_last=drop_last) == count


@pytest.mark.parametrize("bptt", [0, -1])
def test_bad_bptt_raises_at_the_call(bptt):
  """num_windows and iterate_bptt reject bptt < 1 when called, not later."""
  ids = np.zeros((10, 2), np.int32)
  with pytest.raises(ValueError, match="bptt"):
    data.num_windows(ids, bptt)
  with pytest.raises(ValueError, match="bptt"):
    data.iterate_bptt(ids, bptt)


def test_bad_start_raises_at_the_call():
  """iterate_bptt checks start when called, before the first next()."""
  with pytest.raises(ValueError, match="start"):
    data.iterate_bptt(np.zeros((10, 2), np.int32), 3, start=50)
