"""Text descriptors (streams.text_stats): length, word count, share of words unknown to the tokenizer; vocabularies
from files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streams.exceptions import StreamsError
from streams.text_stats import load_vocab, text_stats

pytestmark = pytest.mark.unit


def test_text_stats_counts_characters_words_and_unknown_words():
    stats = text_stats("Great, fast delivery! glitchy portal", vocab={"great", "fast", "delivery"})
    assert stats == {"length": 36.0, "word_count": 5.0, "oov_share": pytest.approx(2 / 5)}


def test_text_stats_without_vocab_leaves_oov_out_and_empty_text_is_zero():
    assert text_stats("two words") == {"length": 9.0, "word_count": 2.0}
    assert text_stats("", vocab={"a"}) == {"length": 0.0, "word_count": 0.0, "oov_share": 0.0}


def test_cased_vocabulary_matches_as_written_then_lower_cased():
    assert text_stats("Paris paris PARIS", vocab={"Paris"})["oov_share"] == pytest.approx(2 / 3)
    assert text_stats("Paris paris PARIS", vocab={"paris"})["oov_share"] == 0.0


def test_load_vocab_reads_vocab_txt_and_tokenizer_json_without_pieces_or_specials(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\n##ing\nlove\n\n")
    assert load_vocab(tmp_path) == {"the", "love"}
    other = tmp_path / "json"
    other.mkdir()
    (other / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"<s>": 0, "hello": 1, "##lo": 2}}}))
    assert load_vocab(other / "tokenizer.json") == {"hello"}


def test_load_vocab_errors_name_the_path(tmp_path):
    with pytest.raises(StreamsError, match=str(tmp_path)):
        load_vocab(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(StreamsError, match=r"tokenizer\.json"):
        load_vocab(bad)


def test_the_cli_imports_neither_evidently_nor_pandas_up_front():
    code = (
        "import sys; import driftloop.commands.monitor; "
        "print(sorted(m for m in ('evidently', 'pandas', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
