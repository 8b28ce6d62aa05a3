"""Config contract: unique flat names, overrides, serialisation roundtrip, presets, field checks."""
import dataclasses
import json

import pytest

from gepalib import config as C
from gepalib.rundir import identity_hash


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
    cfg = C.override(C.get_preset("tiny"), steps="50", warmdown="20", model_dim=64, smear="false", ve_layers="1,2",
                     ttt_lr="1e-3")
    assert cfg.train.steps == 50 and cfg.train.warmdown == 20 and cfg.model.model_dim == 64 and cfg.model.smear is False
    assert cfg.model.ve_layers == (1, 2) and cfg.ttt.ttt_lr == 1e-3
    assert C.get_preset("tiny").train.steps != 50  # the preset itself is untouched


def test_bad_overrides_fail_clearly():
    with pytest.raises(KeyError, match="unknown config field 'stepz'"):
        C.override(C.get_preset("tiny"), stepz=3)
    with pytest.raises(ValueError, match="cannot parse"):
        C.override(C.get_preset("tiny"), steps="many")
    with pytest.raises(ValueError, match="not of the form"):
        C.parse_overrides(["steps"])


def test_json_roundtrip():
    cfg = C.override(C.get_preset("small"), steps=700, ve_layers=(5,))
    back = C.RunConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and identity_hash(back) == identity_hash(cfg)
    assert identity_hash(C.override(cfg, steps=800)) != identity_hash(cfg)
    with pytest.raises(ValueError, match="unknown field"):
        C.RunConfig.from_dict({"train": {"nope": 1}})


BAD_FIELDS = [  # (overrides of the tiny preset, the field the message must name)
    ({"lr_schedule": "cosinee"}, "lr_schedule"), ({"steps": -1}, "steps"), ({"steps": 0}, "steps"),
    ({"warmdown": 99999}, "warmdown"), ({"steps": 100}, "warmdown"),  # the preset's 240 > 100
    ({"warmdown": -1}, "warmdown"), ({"lr_warmup": -1}, "lr_warmup"), ({"grad_clip": -0.1}, "grad_clip"),
    ({"grad_clip": "nan"}, "grad_clip"), ({"matrix_lr": -1e-3}, "matrix_lr"), ({"ema_decay": 1.0}, "ema_decay"),
    ({"adam_beta2": 1.5}, "adam_beta2"), ({"adam_eps": 0.0}, "adam_eps"), ({"muon_momentum": 1.0}, "muon_momentum"),
    ({"muon_ns_steps": 0}, "muon_ns_steps"), ({"seed": -1}, "seed"), ({"micro_batch_tokens": 1000}, "seq_len"),
    ({"batch_tokens": 0}, "batch_tokens"), ({"progress": "fancy"}, "progress"), ({"autocast": "fp16"}, "autocast"),
    ({"device": "tpu"}, "device"), ({"keep_checkpoints": -2}, "keep_checkpoints"),
    ({"val_every": -1}, "val_every"), ({"max_wallclock": -5.0}, "max_wallclock"),
    ({"mlp_act": "gelu"}, "mlp_act"), ({"skip_mode": "concat"}, "skip_mode"), ({"num_kv_heads": 3}, "num_kv_heads"),
    ({"rope_dims": 5}, "rope_dims"), ({"ve_layers": (7,)}, "ve_layers"), ({"xsa_last_n": 9}, "xsa_last_n"),
    ({"embed_dtype": "float16"}, "embed_dtype"), ({"bos_id": 5000}, "bos_id"), ({"logit_softcap": 0.0}, "logit_softcap"),
    ({"data_dir": ""}, "data_dir"), ({"train_shards": -1}, "train_shards"), ({"val_tokens": -1}, "val_tokens"),
    ({"quant_mode": "per_column"}, "quant_mode"), ({"compressor": "gzip"}, "compressor"),
    ({"packing": "bits"}, "packing"), ({"compressor": "rans", "packing": "pack6"}, "packing"),
    ({"passthrough_numel": -1}, "passthrough_numel"), ({"eval_stride": 0}, "eval_stride"),
    ({"eval_batch_seqs": 0}, "eval_batch_seqs"), ({"stream_prefix": -2}, "stream_prefix"),
    ({"ttt_optimizer": "lion"}, "ttt_optimizer"), ({"ttt_scoring": "x"}, "ttt_scoring"),
    ({"ttt_chunk_tokens": 0}, "ttt_chunk_tokens"), ({"ttt_epochs": -1}, "ttt_epochs"), ({"ttt_lr": -1.0}, "ttt_lr"),
    ({"ttt_momentum": 1.0}, "ttt_momentum"), ({"ttt_grad_clip": -1.0}, "ttt_grad_clip"),
    ({"ttt_freeze_blocks": 5}, "ttt_freeze_blocks"),  # tiny has 4 layers
]


@pytest.mark.parametrize("kv,name", BAD_FIELDS, ids=[",".join(kv) for kv, _ in BAD_FIELDS])
def test_bad_field_values_fail_when_the_config_is_built(kv, name):
    """Every field is checked in __post_init__: override, dataclasses.replace and a config.json
    read all refuse a bad value with a ValueError naming the field."""
    tiny = C.get_preset("tiny")
    with pytest.raises(ValueError, match=name):
        C.override(tiny, **kv)
    d = tiny.to_dict()
    for k, v in kv.items():
        d[C.FIELD_INDEX[k][0]][k] = float(v) if v == "nan" else v
    with pytest.raises(ValueError, match=name):
        C.RunConfig.from_dict(json.loads(json.dumps(d)))


def test_boundary_values_are_accepted():
    tiny = C.get_preset("tiny")
    ok = C.override(tiny, steps=240, warmdown=240, grad_clip=0.0, ema_decay=0.0, lr_warmup=0, ttt_freeze_blocks=4,
                    ttt_epochs=0, compressor="rans", packing="shuffle", stream_prefix=-1, eval_seq_len=0)
    assert ok.train.warmdown == ok.train.steps == 240
    with pytest.raises(ValueError, match=r"warmdown=241 is larger than steps=240"):
        dataclasses.replace(ok.train, warmdown=241)
    with pytest.raises(ValueError, match="ModelConfig: mlp_act='gelu'"):
        dataclasses.replace(tiny.model, mlp_act="gelu")
    for name in C.PRESETS:
        assert C.RunConfig.from_dict(json.loads(C.get_preset(name).to_json())) == C.get_preset(name)


# ---------------------------------------------------------------------------
# One value parser: CLI overrides, override() and notebook parameters share one rule


_AGREE = [
    (bool, "qk_norm", v, want) for want, words in ((True, ("1", "true", "yes", "on")), (False, ("0", "false", "no", "off")))
    for w in words for v in (w, w.upper(), f" {w} ")
] + [(bool, "qk_norm", True, True), (bool, "qk_norm", 0, False), (bool, "qk_norm", 1, True),
     (int, "train_shards", "7", 7), (int, "train_shards", "+3", 3), (int, "train_shards", "1e3", 1000), (int, "train_shards", "2.0", 2),
     (int, "train_shards", 2.0, 2), (int, "train_shards", 12, 12),
     (float, "logit_softcap", "0.5", 0.5), (float, "logit_softcap", 3, 3.0), (float, "logit_softcap", " 1e-3 ", 1e-3)]


@pytest.mark.parametrize("t, field_name, raw, want", _AGREE)
def test_one_value_rule_for_fields_and_notebook_parameters(t, field_name, raw, want):
    from gepalib.run.params import Kind, coerce
    got = C.parse_value(field_name, raw)
    assert got == want and type(got) is t
    nb = coerce("x", raw, Kind(t.__name__))
    assert nb == want and type(nb) is t
    section = getattr(C.override(C.get_preset("tiny"), **{field_name: raw}), C.FIELD_INDEX[field_name][0])
    assert getattr(section, field_name) == want


_REJECT = [(bool, "qk_norm", "maybe"), (bool, "qk_norm", 2), (bool, "qk_norm", "t"), (bool, "qk_norm", 1.0),
           (int, "train_shards", "2.5"), (int, "train_shards", True), (int, "train_shards", 2.5),
           (int, "train_shards", "x"), (float, "logit_softcap", "abc"), (float, "logit_softcap", False)]


@pytest.mark.parametrize("t, field_name, raw", _REJECT)
def test_one_value_rule_rejects_the_same_values(t, field_name, raw):
    from gepalib.run.params import Kind, ParameterError, coerce
    with pytest.raises((TypeError, ValueError), match=f"field '{field_name}'"):
        C.parse_value(field_name, raw)
    with pytest.raises(ParameterError, match=f"'x' expects {t.__name__}"):
        coerce("x", raw, Kind(t.__name__))


def test_field_help_is_each_fields_own_comment():
    """config.field_help (ast + tokenize over the section classes) against the reading it replaced:
    every comment token of config/sections.py whose line is ``    name: type = default  # help``."""
    import io
    import re
    import tokenize
    from pathlib import Path
    want: dict[str, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(Path(C.sections.__file__).read_text(encoding="utf-8")).readline):
        m = re.match(r"^    (\w+)\s*:[^=]+=", tok.line) if tok.type == tokenize.COMMENT else None
        if m and m.group(1) in C.FIELD_INDEX and m.group(1) not in want:
            want[m.group(1)] = tok.string.lstrip("#").strip()
    assert len(want) >= 50 and C.field_help() == want
    assert C.field_help()["data_dir"] == "holds *_train_*.bin, *_val_*.bin, tokenizer.model, manifest.json"
