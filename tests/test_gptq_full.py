"""Full-Hessian GPTQ (quant_mode="gptq") against a slow reference written here."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gepalib import data as D
from gepalib.config import QuantConfig, RunConfig, get_preset, override
from gepalib.model import GPT
from gepalib.quant import artifact as A
from gepalib.quant import hessian as HS
from gepalib.quant.container import raw_payload, tensor_table
from gepalib.quant.gptq import (CANDIDATES, QTensor, candidate_scales, dequantize, gptq_lite_faithful,
                                gptq_lite_per_row, quantize_state_dict)
from gepalib.run.configs import SCALES

GPTQ = QuantConfig(quant_mode="gptq", passthrough_numel=256, gptq_block_size=8)


def correlated_inputs(n: int, cols: int, seed: int, sample_seed: int | None = None) -> torch.Tensor:
    """Inputs whose features are strongly correlated (a random mixing, fixed by ``seed``, of a
    few factors plus noise) with uneven scales, as a trained model's activations are;
    ``sample_seed`` draws other samples of the same distribution."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols // 4, cols, generator=g, dtype=torch.float64)
    if sample_seed is not None:
        g = torch.Generator().manual_seed(sample_seed)
    z = torch.randn(n, cols // 4, generator=g, dtype=torch.float64)
    x = z @ mix + 0.3 * torch.randn(n, cols, generator=g, dtype=torch.float64)
    return x * torch.linspace(0.2, 3.0, cols, dtype=torch.float64)


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x.T @ x / x.shape[0]


def layer(rows: int = 12, cols: int = 21, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[0, 3] = 0.4  # an outlier, so the candidates differ
    return w, correlated_inputs(400, cols, seed + 1)


def reference_gptq(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, damp: float,
                   order: list[int] | None = None) -> torch.Tensor:
    """Slow and obvious: one column at a time, no blocks, H^-1 by a plain inverse.
    q_j = quant(w_j); err = (w_j - q_j s) / U_jj; w_{j+1:} -= err * U_{j, j+1:}, with U the
    upper Cholesky factor of (H + damp * mean(diag H) I)^-1, columns taken in ``order``."""
    cols = w.shape[1]
    order = list(range(cols)) if order is None else order
    h = h.double()[order][:, order]
    hd = h + damp * float(torch.diagonal(h).mean()) * torch.eye(cols, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.linalg.inv(hd), upper=True)
    W = w.double()[:, order].clone()
    s = scale.double()
    Q = torch.zeros_like(W)
    for j in range(cols):
        q = torch.clamp(torch.round(W[:, j] / s), -32, 31)
        Q[:, j] = q
        err = (W[:, j] - q * s) / U[j, j]
        W[:, j + 1:] -= err[:, None] * U[j, j + 1:][None, :]
    out = torch.zeros_like(Q)
    out[:, order] = Q
    return out


def damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    return h.double() + damp * float(torch.diagonal(h).mean()) * torch.eye(h.shape[0], dtype=torch.float64)


def row_errors(w: torch.Tensor, q: torch.Tensor, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """(w - q s) H (w - q s)^T per row, written out again."""
    d = w.double() - q.double() * s.double()[:, None]
    return torch.stack([d[i] @ h.double() @ d[i] for i in range(d.shape[0])])


# ---------------------------------------------------------------------------
# The recursion


@pytest.mark.parametrize("block_size", [1, 4, 8, 64])
def test_codes_equal_the_slow_reference(block_size):
    w, x = layer()
    h = hessian_of(x)
    s = candidate_scales(w)[8].to(torch.float16).float()
    U = HS.inverse_cholesky(h, 0.01)
    q, loss = HS.gptq_codes(w, U, s, block_size)
    ref = reference_gptq(w, h, s, 0.01)
    assert torch.equal(q, ref)
    # the recursion's sum of e^2 is the output error under the damped Hessian
    torch.testing.assert_close(loss, row_errors(w, q, s, damped(h, 0.01)), rtol=1e-9, atol=1e-12)
    assert not torch.equal(q, torch.clamp(torch.round(w.double() / s.double()[:, None]), -32, 31))  # not just RTN


def test_act_order_equals_the_reference_in_that_order():
    w, x = layer(seed=3)
    h = hessian_of(x)
    qc = QuantConfig(quant_mode="gptq", gptq_act_order=True, gptq_block_size=5)
    q, s, choice = HS.gptq_per_row(w, h, qc)
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True).tolist()
    assert order != list(range(w.shape[1]))
    q_r, _, _ = gptq_lite_per_row(w)
    for i in range(w.shape[0]):
        s16 = candidate_scales(w)[int(choice[i])].to(torch.float16).float()
        ref = reference_gptq(w, h, s16, qc.gptq_damp, order)[i]
        assert torch.equal(q[i].double(), ref) or torch.equal(q[i], q_r[i])


def test_each_row_keeps_its_best_candidate_by_output_error():
    """Brute force: every candidate's reference GPTQ codes; per row the smallest damped output
    error d H' d^T wins (ties to the earlier candidate); then GPTQ-lite per_row's codes where
    their output error under H itself is strictly smaller."""
    w, x = layer(rows=9, seed=5)
    w[3] *= 0.01  # a row of tiny weights: every code 0 whatever the method, a tie at each step
    h = hessian_of(x)
    q, s, choice = HS.gptq_per_row(w, h, QuantConfig(quant_mode="gptq", gptq_block_size=4))
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and choice.dtype == torch.uint8
    scales = candidate_scales(w).to(torch.float16).float()
    codes = [reference_gptq(w, h, scales[c], 0.01) for c in range(len(CANDIDATES))]
    errs = torch.stack([row_errors(w, codes[c], scales[c], damped(h, 0.01)) for c in range(len(CANDIDATES))])
    q_r, s_r, c_r = gptq_lite_per_row(w)
    rtn_err = row_errors(w, q_r, s_r, h)
    n_rtn = 0
    for i in range(w.shape[0]):
        c = min(range(len(CANDIDATES)), key=lambda k: (float(errs[k, i]), k))
        if float(rtn_err[i]) < float(row_errors(w[i:i + 1], codes[c][i:i + 1], scales[c][i:i + 1], h)[0]):
            n_rtn += 1
            assert int(choice[i]) == int(c_r[i]) and torch.equal(q[i], q_r[i]) and s[i] == s_r[i]
        else:
            assert int(choice[i]) == c and torch.equal(q[i].double(), codes[c][i])
            assert s[i].view(torch.int16) == scales[c][i].half().view(torch.int16)
    assert n_rtn < w.shape[0] // 2
    assert int(choice[3]) == 0  # the tie went to the first candidate


def test_output_error_lower_than_gptq_lite_on_correlated_inputs():
    """||(W - Q) X|| on the calibration inputs: each row at most GPTQ-lite per_row's, the
    whole layer far below both GPTQ-lite modes; also on fresh inputs of the same kind."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(48, 64, generator=g) * 0.3
    x, x_new = correlated_inputs(4096, 64, 12), correlated_inputs(4096, 64, 12, sample_seed=13)
    h = hessian_of(x)

    def out_err(q, s, xs):
        d = w.double() - q.double() * s.double()[:, None]
        return float((d @ xs.T).square().sum())

    qg, sg, _ = HS.gptq_per_row(w, h, QuantConfig(quant_mode="gptq"))
    qf, sf, _ = gptq_lite_faithful(w)
    qr, sr, _ = gptq_lite_per_row(w)
    assert (row_errors(w, qg, sg, h) <= row_errors(w, qr, sr, h) * (1 + 1e-12)).all()
    for xs in (x, x_new):
        eg, ef, er = out_err(qg, sg, xs), out_err(qf, sf, xs), out_err(qr, sr, xs)
        assert eg < 0.6 * min(ef, er), (eg, ef, er)
    # the weights themselves move further from W than GPTQ-lite's (the error went where X is small)
    def mse(q, s):
        return (w - q.float() * s.float()[:, None]).square().mean()

    assert mse(qg, sg) > mse(qr, sr)


def test_dead_inputs_and_singular_hessians():
    w, x = layer(rows=5, cols=10, seed=7)
    x[:, 4] = 0.0  # an input that is always zero: H_44 = 0
    x[:, 7] = x[:, 6]  # two identical inputs: H is singular
    h = hessian_of(x)
    q, s, choice = HS.gptq_per_row(w, h, QuantConfig(quant_mode="gptq", gptq_damp=1e-9))
    assert q.shape == w.shape and torch.isfinite(s.float()).all()
    with pytest.raises(ValueError, match="does not fit"):
        HS.gptq_per_row(w, h[:9, :9], GPTQ)


# ---------------------------------------------------------------------------
# Hessians from hooks


def test_hooks_give_2xtx_over_n_of_every_linear_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False))
    xs = [torch.randn(4, 7, 6) for _ in range(3)]
    hs = HS.collect_hessians(net, xs, chunk_seqs=3)
    x0 = torch.cat([x.reshape(-1, 6) for x in xs]).double()
    x1 = torch.relu(net[0](x0.float())).double()
    assert set(hs) == {"0.weight", "2.weight"}
    torch.testing.assert_close(hs["0.weight"], hessian_of(x0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hs["2.weight"], hessian_of(x1), rtol=1e-5, atol=1e-6)
    assert not any(m._forward_hooks for m in net.modules())  # the hooks are removed


def quick_model_config():
    kv = {k: v for k, v in SCALES["quick"].items() if k in RunConfig().model.__dataclass_fields__}
    return override(get_preset("tiny"), **kv).model


def random_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(quick_model_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_gpt_linears_get_hessians_and_q_k_v_share_one():
    model = random_gpt()
    ids = torch.randint(0, 1024, (3, 2, 16))
    hs = HS.collect_hessians(model, list(ids))
    linears = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(hs) == linears and "blocks.0.mlp.down.weight" in hs and "tok_emb.weight" not in hs
    a = "blocks.1.attn."
    assert torch.equal(hs[a + "q.weight"], hs[a + "k.weight"]) and torch.equal(hs[a + "q.weight"], hs[a + "v.weight"])
    # the MLP's down projection sees relu(up(.))^2-based activations: dimension mlp_hidden
    assert hs["blocks.0.mlp.down.weight"].shape == (64, 64)


def test_tied_head_hessian_is_that_of_the_heads_input():
    """gptq_tied_head: tok_emb's Hessian comes from RMSNorm(last block's output), the input
    the model's logits are computed from (z = RMSNorm(x_L) @ E^T / softcap)."""
    model = random_gpt(4)
    ids = torch.randint(0, 1024, (2, 3, 16))
    seen = []
    hd = model.blocks[-1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    hs = HS.collect_hessians(model, list(ids), tied_head=True)
    hd.remove()
    assert "tok_emb.weight" not in HS.collect_hessians(model, list(ids))
    from gepalib.model import rms_norm

    h = torch.cat([rms_norm(o).reshape(-1, o.shape[-1]) for o in seen]).double()
    torch.testing.assert_close(hs["tok_emb.weight"], hessian_of(h), rtol=1e-5, atol=1e-7)
    cap = model.cfg.logit_softcap
    with torch.no_grad():
        logits = model(ids[0])
    z = h[:ids[0].numel()].float() @ model.tok_emb.weight.float().T / cap
    torch.testing.assert_close(cap * torch.tanh(z), logits.reshape(-1, logits.shape[-1]), rtol=1e-4, atol=1e-4)
    qc = QuantConfig(quant_mode="gptq", passthrough_numel=256, gptq_tied_head=True)
    qm = quantize_state_dict(model.state_dict(), qc, hessians=hs)
    lite = quantize_state_dict(model.state_dict(), QuantConfig(quant_mode="per_row", passthrough_numel=256))
    assert not torch.equal(qm.entries["tok_emb.weight"].q, lite.entries["tok_emb.weight"].q)


# ---------------------------------------------------------------------------
# State dicts and the artifact


def test_state_dict_gptq_which_tensors_and_artifact_roundtrip():
    model = random_gpt(1)
    sd = model.state_dict()
    hs = HS.collect_hessians(model, list(torch.randint(0, 1024, (2, 4, 32))))
    with pytest.raises(ValueError, match="Hessian"):
        quantize_state_dict(sd, GPTQ)
    qm = quantize_state_dict(sd, GPTQ, hessians=hs)
    lite = quantize_state_dict(sd, QuantConfig(quant_mode="per_row", passthrough_numel=256))
    assert qm.quant_mode == "gptq" and set(qm.quantized()) == set(lite.quantized())
    gptq_names = {n for n in qm.quantized() if n in hs}
    assert "blocks.0.mlp.up.weight" in gptq_names and "blocks.1.attn.out.weight" in gptq_names
    for n, e in qm.quantized().items():
        assert isinstance(e, QTensor) and e.row_choice is not None and e.percentile is None
        if n in hs:
            assert not torch.equal(e.q, lite.entries[n].q), n  # error feedback changed the codes
        else:  # tok_emb (embedding and tied head), bigram/ve tables: GPTQ-lite per_row
            assert n in ("tok_emb.weight", "bigram.embed.weight", "ve.embed.weight")
            assert torch.equal(e.q, lite.entries[n].q) and torch.equal(e.scale, lite.entries[n].scale)
    for n, e in qm.passthrough().items():
        assert torch.equal(e.data, lite.entries[n].data)
    data = A.artifact_bytes(qm, GPTQ, meta={"why": "test"})
    back, header = A.artifact_from_bytes(data)
    assert header["quant_mode"] == "gptq" and header["quant_scheme"] == "int6_per_row_gptq_lite"
    a, b = dequantize(qm), dequantize(back)
    assert list(a) == list(b) == list(sd)
    for k in a:
        assert a[k].dtype == b[k].dtype == sd[k].dtype and torch.equal(a[k], b[k]), k
    # per_row's layout: the same sections and raw sizes; only the code values differ
    assert len(raw_payload(qm)) == len(raw_payload(lite)) and tensor_table(qm) == tensor_table(lite)


def test_gptq_settings_are_checked():
    for kv, name in (({"gptq_damp": 0.0}, "gptq_damp"), ({"gptq_block_size": 0}, "gptq_block_size"),
                     ({"gptq_calib_batches": -1}, "gptq_calib_batches"), ({"quant_mode": "obq"}, "quant_mode")):
        with pytest.raises(ValueError, match=name):
            override(get_preset("tiny"), **kv)


# ---------------------------------------------------------------------------
# Calibration data


def test_calibration_reads_only_training_shards(sotu_data_dir, monkeypatch):
    cfg = override(get_preset("tiny"), data_dir=str(sotu_data_dir), quant_mode="gptq", gptq_calib_batches=3,
                   **{k: v for k, v in SCALES["quick"].items() if k in ("num_layers", "model_dim", "num_heads",
                      "num_kv_heads", "mlp_hidden", "rope_dims", "rope_train_seq_len", "bigram_buckets",
                      "bigram_dim", "xsa_last_n", "ve_layers", "ve_dim", "seq_len", "batch_tokens",
                      "micro_batch_tokens", "passthrough_numel")})
    read = []
    real = D.read_shard
    monkeypatch.setattr(D, "read_shard", lambda p, *a, **k: read.append(str(p)) or real(p, *a, **k))
    monkeypatch.setattr(D, "load_val_tokens", lambda *a, **k: pytest.fail("calibration read validation data"))
    sd = random_gpt(2).state_dict()
    hs, info = HS.calibration_hessians(cfg, sd)
    assert read and all("_train_" in p and str(sotu_data_dir) in p for p in read)
    assert info["split"] == "train" and info["files"] and all("_train_" in f for f in info["files"])
    assert info["batches"] == 3 and info["tokens"] == 3 * cfg.train.micro_batch_tokens
    # the same tokens as the first micro-batches of the training stream
    loader = D.TrainLoader(sotu_data_dir, vocab_size=1024)
    model = random_gpt(2)
    ref = HS.collect_hessians(model, [loader.next_batch(cfg.train.micro_batch_tokens, cfg.train.seq_len)[0]
                                      for _ in range(3)])
    for k in ref:
        torch.testing.assert_close(hs[k], ref[k], rtol=1e-6, atol=1e-9)


def fake_run(path, data_dir):
    """A run directory holding a config and EMA weights (random, not trained)."""
    kv = dict(SCALES["quick"])
    kv.pop("progress")
    cfg = override(get_preset("tiny"), data_dir=str(data_dir), steps=10, warmdown=2, **kv)
    (path / "config.json").write_text(cfg.to_json())
    torch.save(random_gpt(3).state_dict(), path / "model_ema.pt")
    return cfg


def test_quantize_run_gptq_end_to_end(tmp_path, sotu_data_dir):
    """A run directory (config + EMA weights) quantized with quant_mode=gptq: the artifact,
    its calibration facts (training shards only) and the tagged round-trip stage."""
    from gepalib.run.pipeline import quantize_run

    fake_run(tmp_path, sotu_data_dir)
    out = quantize_run(tmp_path, report="none", log=lambda s: None, quant_mode="gptq", gptq_calib_batches=2)
    cal = out["artifact"]["calibration"]
    assert cal["split"] == "train" and all("_train_" in f for f in cal["files"]) and cal["batches"] == 2
    assert out["stage"]["name"] == "int6_roundtrip[gptq]" and math.isfinite(out["stage"]["val_bpb"])
    assert A.read_artifact_header(tmp_path / "final_model.int6.gpz")["quant_mode"] == "gptq"


def test_compare_quantizers_in_memory_and_cached(tmp_path, sotu_data_dir):
    from gepalib.run import quantizers as Q

    fake_run(tmp_path, sotu_data_dir)
    variants = {"lite": {"quant_mode": "faithful"}, "gptq+head": {"quant_mode": "gptq", "gptq_tied_head": True}}
    rows = Q.compare_quantizers(tmp_path, variants, ["zstd", "none"], log=lambda s: None, gptq_calib_batches=2)
    assert [(r["quantizer"], r["compressor"]) for r in rows] == [("lite", "zstd"), ("lite", "none"),
                                                                  ("gptq+head", "zstd"), ("gptq+head", "none")]
    assert rows[0]["val_bpb"] == rows[1]["val_bpb"] and rows[0]["model_bytes"] < rows[1]["model_bytes"]
    assert rows[2]["val_bpb"] != rows[0]["val_bpb"] and all("_train_" in f for f in rows[2]["calib_files"])
    assert not (tmp_path / "final_model.int6.gpz").exists()  # the run's own artifact is left alone
    again = Q.compare_quantizers(tmp_path, variants, ["zstd", "none"], log=pytest.fail, gptq_calib_batches=2)
    assert again == rows  # cached in summary.json
    front = Q.frontier(rows, x="model_bytes")
    assert front and all(not any(o["model_bytes"] <= r["model_bytes"] and o["val_bpb"] < r["val_bpb"]
                                 for o in rows) for r in front)
    with pytest.raises(ValueError, match="quant_mode"):
        Q.compare_quantizers(tmp_path, {"x": {"gptq_damp": 0.1}})
