"""Text descriptors that need no downloaded data: length, word count, share of words unknown to the tokenizer.

Evidently's own OOV and sentiment descriptors need nltk corpora, which cannot be fetched offline; these are computed
by the inference worker for each event (``Prediction.text_stats``) and by the training stage for the reference rows,
so both sides of a drift check (the monitor) use the same definitions. They live here, in the stage that produces
them, because the prediction contract carries them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from pathlib import Path

from streams.exceptions import StreamsError

#: Keys of ``Prediction.text_stats`` and the window / reference columns they become.
TEXT_STATS_COLUMNS = {"length": "text_length", "word_count": "word_count", "oov_share": "oov_share"}

# BERT's basic tokenizer splits on whitespace and punctuation; the pieces between punctuation are its "words".
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def text_stats(text: str, vocab: Collection[str] | None = None) -> dict[str, float]:
    """Descriptors of one text.

    Args:
        text: the event's text.
        vocab: the model tokenizer's vocabulary (``load_vocab``). Without it ``oov_share`` is left out.

    Returns:
        ``{"length": characters, "word_count": whitespace-separated words, "oov_share": share of words that are not
        whole entries of the vocabulary}``. A word is lower-cased before the look-up when the vocabulary lacks it as
        written (uncased BERT vocabularies). A text without words has an ``oov_share`` of 0.
    """
    stats = {"length": float(len(text)), "word_count": float(len(text.split()))}
    if vocab is not None:
        words = _WORD.findall(text)
        unknown = sum(1 for w in words if w not in vocab and w.lower() not in vocab)
        stats["oov_share"] = unknown / len(words) if words else 0.0
    return stats


def load_vocab(path: Path) -> frozenset[str]:
    """The vocabulary of a tokenizer: a ``vocab.txt`` (one token a line), a ``tokenizer.json``, or a folder with one.

    WordPiece continuation pieces (``##ing``) and special tokens (``[CLS]``) are left out: they are never whole words.

    Raises:
        StreamsError: no vocabulary file at ``path``, or one that cannot be read; the message names the path.
    """
    if path.is_dir():
        for name in ("vocab.txt", "tokenizer.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise StreamsError(f"no vocab.txt or tokenizer.json in {path}")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            tokens = list(data["model"]["vocab"])
        else:
            tokens = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StreamsError(f"cannot read a tokenizer vocabulary from {path}: {exc}") from exc
    return frozenset(t for t in (t.strip() for t in tokens) if t and not t.startswith("##") and not _special(t))


def _special(token: str) -> bool:
    return (token.startswith("[") and token.endswith("]")) or (token.startswith("<") and token.endswith(">"))
