"""Training the BPE tokenizer of a prepared dataset (see docs/data.md, "Tokenizer").

SentencePiece with the challenge's builder settings (:data:`TRAINER_SETTINGS`), one thread,
a fixed input order and seed, so the same text gives the same model. An impossible vocabulary
(below the 4 special pieces plus the characters the coverage keeps) is refused as one
ValueError line naming the minimum, not SentencePiece's C++ error.
"""
from __future__ import annotations

import io
import re
from typing import Any, Iterable

# The challenge's SentencePiece builder settings (data/download_hf_docs_and_tokenize.py),
# with byte_fallback off as in the published fineweb_1024_bpe.model (docs/data.md, "Tokenizer").
TRAINER_SETTINGS: dict[str, Any] = {
    "model_type": "bpe",
    "character_coverage": 0.999,
    "byte_fallback": False,
    "split_digits": True,
    "normalization_rule_name": "nmt_nfkc",
    "add_dummy_prefix": False,
    "pad_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "unk_id": 3,
    "hard_vocab_limit": False,
    # determinism: one thread, our own fixed input order, no sampling
    "num_threads": 1,
    "input_sentence_size": 0,
    "shuffle_input_sentence": False,
    "max_sentence_length": 16384,
}
TRAINER_SEED = 1234


def split_paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


def tokenizer_sentences(texts: Iterable[str], max_bytes: int, max_len: int) -> list[str]:
    """SentencePiece training input: paragraphs of the given documents, in order, capped at ``max_bytes``."""
    out, total = [], 0
    for t in texts:
        for p in split_paragraphs(t.replace("\x00", " ")):
            while p:  # the trainer skips sentences over max_sentence_length bytes; cut them instead
                head = p.encode("utf-8")[:max_len].decode("utf-8", errors="ignore")
                out.append(head)
                total += len(head.encode("utf-8"))
                p = p[len(head):].strip()
                if max_bytes and total >= max_bytes:
                    return out
    return out


def train_tokenizer(sentences: list[str], vocab_size: int,
                    character_coverage: float = 0.999) -> tuple[bytes, bytes]:
    """Train the BPE model; return (tokenizer.model bytes, tokenizer.vocab bytes). Deterministic."""
    import sentencepiece as spm

    spm.set_random_generator_seed(TRAINER_SEED)
    buf = io.BytesIO()
    settings = {**TRAINER_SETTINGS, "character_coverage": character_coverage}
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
                                       minloglevel=2, **settings)
    except RuntimeError as e:  # SentencePiece's C++ check, e.g. "... smaller than required_chars. 7 vs 69. ..."
        raise ValueError(tokenizer_failure(str(e), vocab_size, character_coverage)) from None
    model = buf.getvalue()
    sp = spm.SentencePieceProcessor(model_proto=model)
    if sp.get_piece_size() != vocab_size:
        raise ValueError(
            f"the corpus is too small for a {vocab_size}-piece BPE tokenizer (got {sp.get_piece_size()}); "
            f"add text or lower vocab_size"
        )
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(vocab_size))
    return model, vocab.encode("utf-8")


def tokenizer_failure(msg: str, vocab_size: int, character_coverage: float) -> str:
    """SentencePiece's trainer error as one line for the user."""
    m = re.search(r"required_chars\. \d+ vs (\d+)", msg)
    if m:
        return (f"vocab_size={vocab_size} is too small for this corpus: its characters (at character_coverage="
                f"{character_coverage}) and the 4 special pieces need at least {m.group(1)}; use a vocab_size of "
                f"{m.group(1)} or more")
    why = re.sub(r"^.*?\] ?", "", msg.strip().splitlines()[0]) or msg.strip()
    return f"SentencePiece cannot train a {vocab_size}-piece tokenizer on this corpus ({why})"
