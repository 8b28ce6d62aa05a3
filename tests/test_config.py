"""Config contract: unique flat names, overrides, serialisation roundtrip, presets."""
import dataclasses
import json

import pytest

from gepalib import config as C


def test_field_names_are_unique_across_sections():
    seen = {}
    for sec, klass in C.SECTIONS.items():
        for f in dataclasses.fields(klass):
            assert f.name not in seen, f"{f.name} in both {seen.get(f.name)} and {sec}"
            seen[f.name] = sec


def test_presets_exist_and_are_frozen():
    assert set(C.PRESETS) >= {"gepa11", "baseline9", "tiny", "small"}
    cfg = C.get_preset("gepa11")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]


def test_gepa11_matches_the_run():
    c = C.get_preset("gepa11")
    m, t, q, e, tt = c.model, c.train, c.quant, c.eval, c.ttt
    assert (m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads, m.mlp_hidden) == (11, 512, 8, 4, 1536)
    assert (m.bigram_buckets, m.bigram_dim, m.bigram_hash, m.rope_dims, m.ve_layers) == (2048, 128, "add", 16, (9, 10))
    assert (t.steps, t.warmdown, t.batch_tokens, t.seq_len, t.seed) == (20000, 8000, 786432, 2048, 42)
    assert t.batch_tokens == 384 * 2048 and t.batch_tokens // t.micro_batch_tokens == 8
    assert (t.grad_clip, t.ema_decay, t.matrix_lr, t.embed_lr, t.decoder_lr_mult) == (0.3, 0.997, 0.025, 0.035, 2.0)
    assert (q.quant_mode, q.quant_embed, q.zstd_level) == ("faithful", True, 22)
    assert (e.eval_stride, tt.ttt_chunk_tokens, tt.ttt_epochs, tt.ttt_freeze_blocks, tt.ttt_lr) == (64, 32768, 10, 2, 0.002)
    assert c.data.train_shards == 80


def test_override_routes_flat_names_and_parses_strings():
    cfg = C.override(C.get_preset("tiny"), steps="50", model_dim=64, smear="false", ve_layers="1,2", ttt_lr="1e-3")
    assert cfg.train.steps == 50 and cfg.model.model_dim == 64 and cfg.model.smear is False
    assert cfg.model.ve_layers == (1, 2) and cfg.ttt.ttt_lr == 1e-3
    assert C.get_preset("tiny").train.steps != 50  # the preset itself is untouched


def test_bad_overrides_fail_clearly():
    with pytest.raises(KeyError, match="unknown config field 'stepz'"):
        C.override(C.get_preset("tiny"), stepz=3)
    with pytest.raises(ValueError, match="cannot parse"):
        C.override(C.get_preset("tiny"), steps="many")
    with pytest.raises(ValueError, match="not of the form"):
        C.parse_overrides(["steps"])


def test_json_roundtrip_and_fingerprint():
    cfg = C.override(C.get_preset("small"), steps=7, ve_layers=(5,))
    back = C.RunConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and back.fingerprint() == cfg.fingerprint()
    assert C.override(cfg, steps=8).fingerprint() != cfg.fingerprint()
    with pytest.raises(ValueError, match="unknown field"):
        C.RunConfig.from_dict({"train": {"nope": 1}})
