"""Word-level corpora (PTB, WikiText-2), batchify, get_batch and the variable-BPTT schedule."""

import statistics
import urllib.error
import urllib.request

import pytest
import torch

from unbottleneck.data import (
    BPTTSchedule,
    Corpus,
    DatasetNotFoundError,
    Dictionary,
    batchify,
    get_batch,
    load_corpus,
    unigram_perplexity,
)
from unbottleneck.data.corpus import EOS

# ---------------------------------------------------------------------------------------
# Real corpora
# ---------------------------------------------------------------------------------------


def test_ptb_token_counts_and_vocab(shared_data):
    c = load_corpus("ptb", data_dir=shared_data)
    assert (c.train.numel(), c.valid.numel(), c.test.numel()) == (929_589, 73_760, 82_430)
    assert c.vocab_size == 10_000
    assert c.train.dtype == torch.int64
    # first-seen order: the first line starts "aer banknote berlitz ..."
    assert c.dictionary.decode(c.train[:3]) == ["aer", "banknote", "berlitz"]
    assert c.dictionary.idx2word[:3] == ["aer", "banknote", "berlitz"]
    assert int(c.train.max()) == 9_999 and int(c.train.min()) == 0
    eos = c.dictionary.word2idx[EOS]
    assert int((c.train == eos).sum()) == 42_068  # one <eos> per line
    assert int((c.valid == eos).sum()) == 3_370


def test_wikitext2_token_counts_and_vocab(shared_data):
    c = load_corpus("wt2", data_dir=shared_data)
    assert c.name == "wikitext-2"
    assert c.train.numel() == 2_088_628
    assert (c.valid.numel(), c.test.numel()) == (217_646, 245_569)
    assert c.vocab_size == 33_278
    # the file starts with an empty line: its <eos> is the first token, id 0
    assert c.dictionary.idx2word[0] == EOS and int(c.train[0]) == 0


def test_load_corpus_returns_independent_copies(shared_data):
    a = load_corpus("ptb", data_dir=shared_data)
    a.train[:10] = 0
    a.dictionary.add_word("zzz-new")
    b = load_corpus("ptb", data_dir=shared_data)
    assert b.dictionary.decode(b.train[:2]) == ["aer", "banknote"]
    assert len(b.dictionary) == 10_000


def test_missing_corpus_names_data_dir_option(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    for download in (True, False):
        with pytest.raises(DatasetNotFoundError) as exc:
            load_corpus("ptb", data_dir=tmp_path / "empty", download=download)
        msg = str(exc.value)
        assert "--data-dir" in msg and "UNBOTTLENECK_DATA" in msg and "ptb.train.txt" in msg


def test_unknown_corpus_name():
    with pytest.raises(ValueError, match="unknown corpus 'penn-treebank'.*ptb, wikitext-2"):
        load_corpus("penn-treebank")


# ---------------------------------------------------------------------------------------
# Tokenisation on in-memory text
# ---------------------------------------------------------------------------------------


def test_tokenisation_rules():
    c = Corpus.from_texts("a b\n\nb  c a\n", "c a\n", "\n")
    assert c.dictionary.idx2word == ["a", "b", EOS, "c"]
    assert c.train.tolist() == [0, 1, 2, 2, 1, 3, 0, 2]  # empty line -> <eos> alone
    assert c.valid.tolist() == [3, 0, 2]
    assert c.test.tolist() == [2]


def test_unknown_words_map_to_unk_or_fail():
    c = Corpus.from_texts("a <unk> b\n", "a zebra\n", "b\n")
    unk = c.dictionary.word2idx["<unk>"]
    assert c.valid.tolist() == [0, unk, c.dictionary.word2idx[EOS]]
    with pytest.raises(ValueError, match="not in the training vocabulary.*zebra"):
        Corpus.from_texts("a b\n", "a zebra\n", "b\n")


def test_dictionary_roundtrip():
    d = Dictionary(["x", "y", "x"])
    assert len(d) == 2 and "y" in d and "z" not in d
    assert d.decode(d.encode(["y", "x"])) == ["y", "x"]


def test_unigram_perplexity_of_uniform_data():
    train = torch.arange(4).repeat(100)
    ppl = unigram_perplexity(train, torch.tensor([0, 1, 2, 3]), 4)
    assert ppl == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------


def test_batchify_layout():
    data = torch.arange(23)
    b = batchify(data, 4)
    assert b.shape == (5, 4) and b.is_contiguous()
    for col in range(4):  # each column is a contiguous slice of the stream
        assert b[:, col].tolist() == list(range(5 * col, 5 * col + 5))


@pytest.mark.parametrize("data, bsz, match", [
    (torch.arange(12).view(3, 4), 2, "1-D token stream"),
    (torch.arange(10), 0, "positive int"),
    (torch.arange(10), 6, "too few"),
])
def test_batchify_errors(data, bsz, match):
    with pytest.raises(ValueError, match=match):
        batchify(data, bsz)


def test_get_batch_shifts_by_one_and_truncates():
    src = batchify(torch.arange(40), 4)  # (10, 4)
    x, y = get_batch(src, 2, 3)
    assert x.shape == y.shape == (3, 4)
    assert torch.equal(x, src[2:5]) and torch.equal(y, src[3:6])
    x, y = get_batch(src, 7, 5)  # only 2 targets left
    assert x.shape == (2, 4) and torch.equal(y, src[8:10])
    with pytest.raises(ValueError, match="outside"):
        get_batch(src, 9, 2)
    with pytest.raises(ValueError, match="seq_len"):
        get_batch(src, 0, 0)
    with pytest.raises(ValueError, match=r"\(T, B\)"):
        get_batch(torch.arange(10), 0, 2)


def test_variable_bptt_is_deterministic_given_the_seed():
    a = [BPTTSchedule(70, seed=3).next_len() for _ in range(1)]
    s1, s2, s3 = BPTTSchedule(70, seed=3), BPTTSchedule(70, seed=3), BPTTSchedule(70, seed=4)
    l1 = [s1.next_len() for _ in range(300)]
    assert l1[:1] == a
    assert l1 == [s2.next_len() for _ in range(300)]
    assert l1 != [s3.next_len() for _ in range(300)]


def test_variable_bptt_distribution_and_resume():
    s = BPTTSchedule(70, std=5.0, p_full=0.95, min_len=5, max_delta=40, seed=0)
    lens = [s.next_len() for _ in range(4000)]
    assert min(lens) >= 5 and max(lens) <= 110
    long = [n for n in lens if n > 52]  # base 70 (the halved base 35 gives < 52 with p ~ 1 - 1e-4)
    assert 0.93 < len(long) / len(lens) < 0.97
    assert statistics.fmean(long) == pytest.approx(69.5, abs=0.5)  # int() truncates: ~ -0.5
    assert statistics.pstdev(long) == pytest.approx(5.0, abs=0.4)
    # state_dict: a restored schedule continues with the same lengths
    state = s.state_dict()
    nxt = [s.next_len() for _ in range(20)]
    t = BPTTSchedule(70, seed=123)
    t.load_state_dict(state)
    assert [t.next_len() for _ in range(20)] == nxt
    assert s.lr_scale(35) == 0.5


def test_schedule_epoch_covers_the_stream_once():
    s = BPTTSchedule(7, seed=1)
    steps = list(s.epoch(100))
    pos = 0
    for i, n in steps:
        assert i == pos and n >= 1
        pos += n
    assert pos == 99  # every row but the last is an input exactly once
    fixed = BPTTSchedule(7, variable=False)
    assert [n for _, n in fixed.epoch(30)] == [7, 7, 7, 7, 1]


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bptt"):
        BPTTSchedule(0)
    with pytest.raises(ValueError, match="p_full"):
        BPTTSchedule(10, p_full=1.5)
