"""One rank/world helper and one file hash."""
import hashlib

from gepalib import data, fsio
from gepalib.eval import doc_ttt
from gepalib.dist import rank_world
from gepalib.eval import ttt


def test_rank_world_single_process_and_doc_ttt_uses_it():
    assert rank_world() == (0, 1)
    # the TTT loops call the one helper; neither keeps a copy of its own
    assert not hasattr(doc_ttt, "_rank_world") and not hasattr(ttt, "_rank_world")
    assert not hasattr(doc_ttt, "rank_world") and not hasattr(ttt, "rank_world")


def test_one_file_hash(tmp_path):
    p = tmp_path / "f.bin"
    payload = bytes(range(256)) * 40000  # > one 4 MiB read
    p.write_bytes(payload)
    want = hashlib.sha256(payload).hexdigest()
    assert data.sha256_file(p) == want and fsio.file_sha256(p) == (want, len(payload))
