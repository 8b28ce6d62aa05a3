"""`gepa data download` against a fake Hugging Face Hub on 127.0.0.1 (no internet needed).

The server speaks the part of the hub protocol ``hf_hub_download`` uses:
HEAD/GET ``/datasets/{repo}/resolve/{revision}/{path}`` answering with
``X-Repo-Commit``, ``ETag`` and ``Content-Length``; 404 with
``X-Error-Code: EntryNotFound`` for unknown files.
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import numpy as np
import pytest

from gepalib import data as D
from gepalib.download import download_fineweb

REPO_ID = "fakeorg/parameter-golf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.gets: Counter[str] = Counter()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _lookup(self):
                prefix = f"/datasets/{REPO_ID}/resolve/"
                path = unquote(self.path.split("?")[0])
                if not path.startswith(prefix):
                    return None, None
                _rev, _, rel = path[len(prefix):].partition("/")
                return rel, hub.files.get(rel)

            def _head(self, rel, body):
                if body is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"' + hashlib.sha1(body).hexdigest() + '"')
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                return True

            def do_HEAD(self):
                self._head(*self._lookup())

            def do_GET(self):
                rel, body = self._lookup()
                if self._head(rel, body):
                    hub.gets[rel] += 1
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _shard_bytes(tmp_path, name, tokens):
    D.write_shard(tmp_path / name, tokens)
    return (tmp_path / name).read_bytes()


@pytest.fixture
def hub(tmp_path, sotu_data_dir, monkeypatch):
    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    src.mkdir()
    base = "datasets/datasets/fineweb10B_sp1024"
    files = {}
    shards = {"fineweb_val_000000.bin": 900, "fineweb_train_000000.bin": 700, "fineweb_train_000001.bin": 500,
              "fineweb_train_000002.bin": 300}
    for name, n in shards.items():
        files[f"{base}/{name}"] = _shard_bytes(src, name, rng.integers(0, 1024, size=n))
    files["datasets/tokenizers/fineweb_1024_bpe.model"] = (sotu_data_dir / "tokenizer.model").read_bytes()
    files["datasets/tokenizers/fineweb_1024_bpe.vocab"] = (sotu_data_dir / "tokenizer.vocab").read_bytes()
    manifest = {
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "vocab_size": 1024,
                      "path": "datasets/fineweb10B_sp1024", "stats": {"files_train": 3, "files_val": 1}}],
        "tokenizers": [{"name": "sp_bpe_1024", "kind": "sentencepiece_bpe", "vocab_size": 1024,
                        "model_path": "tokenizers/fineweb_1024_bpe.model",
                        "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
    }
    files["datasets/manifest.json"] = json.dumps(manifest).encode()
    server = FakeHub(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield server
    server.close()


def _get(out, **kw):
    return download_fineweb(out, train_shards=kw.pop("train_shards", 2), repo_id=REPO_ID, verbose=False, **kw)


def test_download_fetches_validates_and_resumes(tmp_path, hub):
    out = tmp_path / "fw"
    m = _get(out)
    names = ["fineweb_val_000000.bin", "fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    for n in names:
        assert (out / n).read_bytes() == hub.files[f"datasets/datasets/fineweb10B_sp1024/{n}"]
    assert not (out / "fineweb_train_000002.bin").exists()
    assert (out / "tokenizer.model").read_bytes() == hub.files["datasets/tokenizers/fineweb_1024_bpe.model"]
    assert not (out / ".download").exists()
    assert m["splits"]["val"]["tokens"] == 900 and m["splits"]["train"]["tokens"] == 1200
    assert m["download"] == {**m["download"], "fetched": 3, "kept": 0}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["files"]["fineweb_train_000001.bin"]["sha256"] == D.sha256_file(out / "fineweb_train_000001.bin")
    chk = D.validate_data_dir(out, 1024, deep=True)["check"]
    assert (chk["train_shards"], chk["val_shards"], chk["val_tokens"]) == (2, 1, 900)

    # resume: valid shards are kept, nothing is fetched again
    before = sum(v for k, v in hub.gets.items() if k.endswith(".bin"))
    m2 = _get(out, train_shards=3)
    assert (m2["download"]["fetched"], m2["download"]["kept"]) == (1, 3)
    assert sum(v for k, v in hub.gets.items() if k.endswith(".bin")) == before + 1

    # a corrupt local shard (e.g. an interrupted copy) is detected and fetched again
    with open(out / "fineweb_train_000000.bin", "r+b") as f:
        f.truncate(1500)
    m3 = _get(out, train_shards=3)
    assert (m3["download"]["fetched"], m3["download"]["kept"]) == (1, 3)
    assert D.read_shard(out / "fineweb_train_000000.bin", 1024).size == 700


def test_download_rejects_a_corrupt_remote_shard(tmp_path, hub):
    key = "datasets/datasets/fineweb10B_sp1024/fineweb_train_000001.bin"
    body = bytearray(hub.files[key])
    body[0] ^= 0xFF  # break the magic
    hub.files[key] = bytes(body)
    with pytest.raises(D.ShardError, match="fineweb_train_000001.bin as served is not a valid shard: .*bad magic"):
        _get(tmp_path / "fw")
    assert not (tmp_path / "fw" / "fineweb_train_000001.bin").exists()
    assert D.read_shard(tmp_path / "fw" / "fineweb_train_000000.bin").size == 700  # earlier shards kept


def test_download_argument_errors(tmp_path, hub):
    with pytest.raises(ValueError, match="only 3 training shards .* requested 4"):
        _get(tmp_path / "fw", train_shards=4)
    with pytest.raises(ValueError, match="no dataset named 'fineweb10B_sp4096'"):
        _get(tmp_path / "fw", variant="sp4096")
    with pytest.raises(ValueError, match="unknown variant"):
        _get(tmp_path / "fw", variant="gpt2")
    with pytest.raises(FileNotFoundError, match="not found on the hub"):
        download_fineweb(tmp_path / "fw", repo_id="fakeorg/other", verbose=False)


def test_cli_download(tmp_path, hub, capsys):
    from gepalib.cli import main as gepa

    out = tmp_path / "cli"
    assert gepa(["data", "download", "--variant", "sp1024", "--train-shards", "1", "--out", str(out),
                 "--repo-id", REPO_ID]) == 0
    assert "val_tokens:900 train_tokens:700" in capsys.readouterr().out
    assert gepa(["data", "check", str(out), "--deep"]) == 0
    assert gepa(["data", "download", "--train-shards", "9", "--out", str(out), "--repo-id", REPO_ID]) == 2
    assert "only 3 training shards" in capsys.readouterr().err
