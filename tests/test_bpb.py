"""Byte accounting (docs/data.md): lookup tables, the "▁" rule, and bytes == UTF-8 length of the text."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gepalib.bpb import ByteLUTs, bpb_from_sums, build_byte_luts, stream_bytes, target_bytes
from gepalib.data import list_shards, load_tokenizer, read_shard

SP = "\u2581"


def _reference_luts(sp, V):
    """Obvious per-id reference of the three byte tables, as Python lists."""
    B, L, Z = [0] * V, [False] * V, [True] * V
    for t in range(sp.get_piece_size()):
        kind_boundary = sp.is_control(t) or sp.is_unknown(t) or sp.is_unused(t)
        if kind_boundary:
            continue
        Z[t] = False
        if sp.is_byte(t):
            B[t] = 1
            continue
        piece = sp.id_to_piece(t)
        L[t] = piece[:1] == SP
        B[t] = len((piece[1:] if L[t] else piece).encode("utf-8"))
    return B, L, Z


def _ref_bytes(ids, B, L, Z):
    return sum(B[t] + int(L[t] and not Z[p]) for p, t in zip(ids[:-1], ids[1:]))


def _tokenizers(sotu_dir, official):
    out = [("sotu", load_tokenizer(sotu_dir / "tokenizer.model"))]
    if official.is_file():
        out.append(("official", load_tokenizer(official)))
    return out


def _docs_from_val_shard(data_dir, n):
    """The first n documents of the val stream, split at BOS (each starts with BOS)."""
    toks = read_shard(list_shards(data_dir, "val")[0]).astype(np.int64)
    starts = np.flatnonzero(toks == 1)
    return [toks[a:b].tolist() for a, b in zip(starts[:n], starts[1:n + 1])]


def test_luts_match_reference(sotu_data_dir):
    from conftest import OFFICIAL_TOKENIZER

    for name, sp in _tokenizers(sotu_data_dir, OFFICIAL_TOKENIZER):
        V = sp.get_piece_size() + 6  # model vocab larger than the tokenizer: the extra ids are boundary, 0 bytes
        luts = build_byte_luts(sp, V)
        B, L, Z = _reference_luts(sp, V)
        assert luts.base_bytes.dtype == torch.int64 and luts.has_leading_space.dtype == torch.bool
        assert luts.base_bytes.tolist() == B and luts.has_leading_space.tolist() == L and luts.is_boundary.tolist() == Z
        assert luts.is_boundary[:4].all() and luts.base_bytes[:4].sum() == 0, name  # pad, bos, eos, unk
        assert luts.is_boundary[-6:].all() and luts.base_bytes[-6:].sum() == 0
        # pieces carry "▁" only in front, so B + L is exactly the piece's decoded length
        assert not any(SP in sp.id_to_piece(t)[1:] for t in range(sp.get_piece_size())), name
        moved = luts.to("cpu")
        assert isinstance(moved, ByteLUTs) and torch.equal(moved.base_bytes, luts.base_bytes)
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        build_byte_luts(sotu_data_dir / "tokenizer.model", 1000)


def test_official_tokenizer_facts(official_tokenizer_path):
    sp = load_tokenizer(official_tokenizer_path)
    luts = build_byte_luts(official_tokenizer_path, 1024)
    assert sp.get_piece_size() == 1024
    assert int(luts.has_leading_space.sum()) == 476  # pieces starting with "▁" (docs/data.md)
    assert sp.id_to_piece(940) == SP and luts.base_bytes[940] == 0 and luts.has_leading_space[940]
    assert not any(sp.is_byte(t) for t in range(1024))
    assert luts.is_boundary.tolist() == [t < 4 for t in range(1024)]


def test_target_bytes_matches_slow_reference(sotu_data_dir):
    sp = load_tokenizer(sotu_data_dir / "tokenizer.model")
    V = 1030
    luts = build_byte_luts(sp, V)
    B, L, Z = _reference_luts(sp, V)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (3, 257), generator=g)
    ids[:, ::17] = 1  # some BOS
    ids[:, 5::23] = 3  # some unk
    got = target_bytes(ids[:, :-1], ids[:, 1:], luts)
    assert got.dtype == torch.int64 and got.shape == (3, 256)
    for row, brow in zip(ids.tolist(), got.tolist()):
        assert brow == [B[t] + int(L[t] and not Z[p]) for p, t in zip(row[:-1], row[1:])]
    assert stream_bytes(ids[0], luts) == _ref_bytes(ids[0].tolist(), B, L, Z)
    with pytest.raises(ValueError, match="differ in shape"):
        target_bytes(ids[:, :-2], ids[:, 1:], luts)


@pytest.mark.parametrize("which", ["sotu", "official"])
def test_bytes_equal_utf8_length_of_decoded_text(sotu_data_dir, which):
    """For documents encoded with BOS, sum of target bytes == len(UTF-8 of the text the tokenizer keeps).

    "The text the tokenizer keeps" is the decoded text: nmt_nfkc normalisation and whitespace
    stripping/collapsing happen before tokenisation, so raw text lengths differ. Documents with
    unknown tokens are excluded here (unk targets count 0 bytes by design; tested separately).
    """
    from conftest import OFFICIAL_TOKENIZER
    from gepalib.corpus import sotu_documents

    if which == "official" and not OFFICIAL_TOKENIZER.is_file():
        pytest.skip(f"official tokenizer not found at {OFFICIAL_TOKENIZER}")
    path = sotu_data_dir / "tokenizer.model" if which == "sotu" else OFFICIAL_TOKENIZER
    sp = load_tokenizer(path)
    luts = build_byte_luts(sp, 1024)
    if which == "sotu":
        docs = _docs_from_val_shard(sotu_data_dir, 120)  # exactly what the val set scores
    else:
        val, _, _ = sotu_documents(4000, 1_250_000, 1337)
        docs = [[1] + sp.encode(t) for t in val[:120]]
    checked, stream = 0, []
    for ids in docs:
        stream += ids
        if sp.unk_id() in ids:
            continue
        text = sp.decode(ids[1:])
        assert stream_bytes(torch.tensor(ids), luts) == len(text.encode("utf-8"))
        assert len(sp.normalize(text).replace(SP, " ").encode("utf-8")) == len(text.encode("utf-8"))
        checked += 1
    assert checked >= 30, f"only {checked} unk-free documents"
    # over a multi-document stream the per-document sums add up (BOS resets the space rule)
    assert stream_bytes(torch.tensor(stream), luts) == sum(stream_bytes(torch.tensor(d), luts) for d in docs)


def test_space_after_bos_and_unknown_add_no_byte(sotu_data_dir):
    sp = load_tokenizer(sotu_data_dir / "tokenizer.model")
    luts = build_byte_luts(sp, 1024)
    the = sp.piece_to_id(SP + "the")
    plain = sp.piece_to_id("a")
    assert the != sp.unk_id() and plain != sp.unk_id()

    def bytes_of(ids):
        return target_bytes(torch.tensor(ids[:-1]), torch.tensor(ids[1:]), luts).tolist()

    assert bytes_of([1, the, the]) == [3, 4]  # no space byte right after BOS, one after a normal token
    assert bytes_of([plain, 3, the]) == [0, 3]  # unk target: 0 bytes; and no space byte right after unk
    assert bytes_of([the, 1, 2, 0]) == [0, 0, 0]  # control targets: 0 bytes
    bare = sp.piece_to_id(SP)
    if bare != sp.unk_id():
        assert bytes_of([1, bare, plain]) == [0, 1] and bytes_of([plain, bare]) == [1]


def test_bpb_from_sums():
    assert bpb_from_sums(math.log(2) * 1000, 1000) == pytest.approx(1.0, abs=1e-15)
    # FineWeb sanity check (docs/data.md): 2.436 bytes/token makes bpb ~= 0.5923 x nats/token
    assert bpb_from_sums(6.93 * 1e6, 2.436e6) == pytest.approx(6.93 * 0.5923, rel=1e-3)
    # fp64 accumulation: tensors and huge sums are fine
    assert bpb_from_sums(torch.tensor(4.25e8, dtype=torch.float64), torch.tensor(2e8, dtype=torch.float64)) == \
        pytest.approx(4.25e8 / (math.log(2) * 2e8), rel=1e-15)
    with pytest.raises(ValueError, match="0.0 bytes"):
        bpb_from_sums(1.0, 0)
