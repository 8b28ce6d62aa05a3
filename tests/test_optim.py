"""Muon (gepalib/muon.py), the submission's parameter groups and the schedules (gepalib/optim.py)."""
from __future__ import annotations

import math

import pytest
import torch

from gepalib.config import TrainConfig, get_preset, override
from gepalib.muon import Muon, muon_shape_scale, zeropower_newton_schulz
from gepalib.optim import build_optimizers, group_of, lr_multiplier, muon_momentum, param_groups, set_lr

A, B, C = 3.4445, -4.7750, 2.0315


def ns_reference(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Slow, obvious fp64 Newton-Schulz with the submission's coefficients."""
    X = G.double()
    X = X / (X.norm() + 1e-7)
    t = X.shape[0] > X.shape[1]
    if t:
        X = X.T
    for _ in range(steps):
        M = X @ X.T
        X = A * X + (B * M + C * M @ M) @ X
    return X.T if t else X


def ns_submission_bf16(G: torch.Tensor, steps: int = 5, square_first: bool = False) -> torch.Tensor:
    """The submission's zeropower_via_newtonschulz5, line for line (bf16 throughout).

    ``B = b * A + c * A @ A`` is Python's left-to-right ``b*A + (c*A) @ A``;
    ``square_first=True`` is the other rounding, ``b*A + c*(A @ A)``."""
    a, b, c = A, B, C
    X = G.bfloat16()
    X /= X.norm() + 1e-7
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(steps):
        M = X @ X.T
        Bm = b * M + c * (M @ M) if square_first else b * M + c * M @ M
        X = a * X + Bm @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 96), (384, 128)])
def test_newton_schulz_is_bit_exact_with_the_submission(shape):
    torch.manual_seed(10 + sum(shape))
    G = torch.randn(*shape) * 0.01  # a gradient-sized matrix
    O = zeropower_newton_schulz(G, steps=5)
    ref = ns_submission_bf16(G)
    assert O.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(O, ref)  # bit-equal, 5 steps, tall matrices transposed
    # the other association rounds differently in bf16: the check above can fail
    other = ns_submission_bf16(G, square_first=True)
    assert not torch.equal(other, ref)
    assert 1e-3 < ((other.float() - ref.float()).norm() / ref.float().norm()).item() < 0.1


def polar(G: torch.Tensor):
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return U, S, Vh


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (128, 384), (384, 128)])
def test_newton_schulz_vs_svd_polar_factor(shape):
    torch.manual_seed(sum(shape))
    G = torch.randn(*shape)
    O = zeropower_newton_schulz(G, steps=5)
    assert O.dtype == torch.bfloat16 and O.shape == G.shape
    O = O.double()
    U, S, Vh = polar(G)
    # Same directions as the polar factor U V^T: U^T O V is (nearly) diagonal ...
    M = U.T @ O @ Vh.T
    off = M - torch.diag(torch.diag(M))
    assert off.abs().max() < 0.06, off.abs().max()
    # ... with singular values in the band 5 NS steps reach: roughly [0.7, 1.2], not 1.
    sv = torch.linalg.svdvals(O)
    assert sv.min() > 0.64 and sv.max() < 1.25, (sv.min(), sv.max())
    assert sv.max() - sv.min() > 0.3  # these coefficients do not converge exactly
    cos = (O * (U @ Vh)).sum() / (O.norm() * (U @ Vh).norm())
    assert cos > 0.97
    # and it is the submission's iteration: within bf16 error of the fp64 reference
    R = ns_reference(G)
    assert (O - R).norm() / R.norm() < 0.06


def test_newton_schulz_square_with_known_spectrum():
    """Square matrix with singular values spread over [0.005, 1] (x1000 range)."""
    torch.manual_seed(3)
    n = 96
    U, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64))
    s = torch.logspace(math.log10(0.05), 1, n, dtype=torch.float64)
    G = (U @ torch.diag(s) @ V.T).float()
    O = zeropower_newton_schulz(G).double()
    D = U.T @ O @ V
    d = torch.diag(D)
    assert d.min() > 0.64 and d.max() < 1.25
    assert (D - torch.diag(d)).abs().max() < 0.06
    with pytest.raises(ValueError, match="2-D"):
        zeropower_newton_schulz(torch.randn(3, 4, 5))


def test_shape_scale():
    assert muon_shape_scale(1536, 512) == pytest.approx(math.sqrt(3))
    assert muon_shape_scale(512, 128) == pytest.approx(2.0)
    assert muon_shape_scale(512, 1536) == 1.0 and muon_shape_scale(256, 512) == 1.0


def test_muon_step_matches_reference():
    """Three Muon steps against the submission's recipe written out by hand."""
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 48), (32, 32)]
    ps = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    refs = [p.detach().clone() for p in ps]
    bufs = [torch.zeros_like(r) for r in refs]
    lr, wd, mus = 0.05, 0.04, (0.92, 0.93, 0.94)
    opt = Muon([{"params": ps, "lr": lr}], lr=lr, momentum=mus[0], weight_decay=wd)
    for mu in mus:
        grads = [torch.randn(*s) for s in shapes]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.param_groups[0]["momentum"] = mu
        opt.step()
        for i, g in enumerate(grads):
            bufs[i] = mu * bufs[i] + g
            u = g + mu * bufs[i]  # Nesterov
            o = (zeropower_newton_schulz(u) * math.sqrt(max(1, u.size(0) / u.size(1)))).bfloat16().float()
            refs[i] = refs[i] * (1 - lr * wd) - lr * o
    for p, r in zip(ps, refs):
        torch.testing.assert_close(p.detach(), r, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(4))])


# ---------------------------------------------------------------------------
# Groups


@pytest.fixture(scope="module")
def gepa11_model():
    from gepalib.model import GPT

    with torch.device("meta"):  # names, shapes and dtypes only: skip the 27M-param init
        return GPT(get_preset("gepa11").model)


def test_gepa11_group_table_matches_the_submission(gepa11_model):
    tcfg = get_preset("gepa11").train
    table = param_groups(gepa11_model, tcfg)
    expect = {  # group: (optimizer, base_lr, tensors, params)  -- the submission's group and parameter tables
        "embed": ("adamw", 0.035, 1, 524_288),
        "matrix-enc": ("muon", 0.025, 30, 5 * 2_359_296),
        "matrix-dec": ("muon", 0.05, 36, 6 * 2_359_296),
        "bigram-proj": ("muon", 0.025, 1, 65_536),
        "scalar-enc": ("adamw", 0.025, 30, 5 * 5_128),
        "scalar-dec": ("adamw", 0.05, 36, 6 * 5_128),
        "scalar-other": ("adamw", 0.025, 8, 512 + 262_144 + 2 * 2_560 + 131_072 + 32_768 + 1 + 2),
        "none": ("none", 0.0, 0, 0),
    }
    for g, (opt, lr, n, numel) in expect.items():
        row = table[g]
        assert (row.optimizer, len(row.names), row.numel) == (opt, n, numel), g
        assert row.base_lr == pytest.approx(lr), g
    assert sum(r.numel for r in table.values()) == 27_030_107
    assert set(table["scalar-other"].names) == {
        "smear.gate", "bigram.embed.weight", "skip_weights", "skip_gates", "ve.embed.weight",
        "ve.proj.weight", "ve.scale", "ve.layer_scales"}
    assert table["embed"].names == ["tok_emb.weight"]
    assert table["bigram-proj"].names == ["bigram.proj.weight"]
    # the 6 matrices per block, encoder = blocks 0-4
    suffixes = ("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.out.weight", "mlp.up.weight",
                "mlp.down.weight")
    assert sorted(table["matrix-enc"].names) == sorted(f"blocks.{i}.{s}" for i in range(5) for s in suffixes)
    assert sorted(table["matrix-dec"].names) == sorted(f"blocks.{i}.{s}" for i in range(5, 11) for s in suffixes)
    # resid_mix is 2-D but on the control list -> AdamW
    assert "blocks.0.resid_mix" in table["scalar-enc"].names and "blocks.10.resid_mix" in table["scalar-dec"].names


def test_build_optimizers_covers_every_param_once(gepa11_model):
    tcfg = get_preset("gepa11").train
    opts, table = build_optimizers(gepa11_model, tcfg)
    assert [type(o).__name__ for o in opts] == ["AdamW", "AdamW", "Muon", "Muon"]
    seen = {}
    for o in opts:
        for g in o.param_groups:
            assert g["lr"] == g["base_lr"] == pytest.approx(table[g["name"]].base_lr)
            for p in g["params"]:
                assert id(p) not in seen
                seen[id(p)] = g["name"]
    names = {id(p): n for n, p in gepa11_model.named_parameters()}
    assert set(seen) == set(names)  # additive bigram: no untrained "none" tensor
    adam = opts[0].param_groups[0]
    assert adam["betas"] == (0.9, 0.95) and adam["eps"] == 1e-8 and adam["weight_decay"] == 0.04
    assert not adam.get("fused")  # fused only on CUDA
    mu = opts[2].param_groups[0]
    assert mu["nesterov"] and mu["weight_decay"] == 0.04 and mu["ns_steps"] == 5
    assert opts[0].param_groups[0]["params"][0].dtype == torch.bfloat16  # E_tok updated in bf16


def test_xor_bigram_scale_is_never_updated():
    from gepalib.model import GPT

    cfg = override(get_preset("tiny"), bigram_hash="xor", num_layers=2, ve_layers=(1,), xsa_last_n=1)
    model = GPT(cfg.model)
    opts, table = build_optimizers(model, cfg.train)
    assert table["none"].names == ["bigram.scale"]
    assert all(p is not model.bigram.scale for o in opts for g in o.param_groups for p in g["params"])
    assert group_of("bigram.scale", model.bigram.scale, 1) == "none"


def test_adamw_weight_decay_is_decoupled_and_scaled_by_lr():
    from gepalib.model import GPT

    cfg = override(get_preset("tiny"), num_layers=2, ve_layers=(1,), xsa_last_n=1)
    model = GPT(cfg.model)
    opts, _ = build_optimizers(model, cfg.train)
    f = set_lr(opts, 0, cfg.train)
    w0 = model.smear.gate.detach().clone() + 1.0
    with torch.no_grad():
        model.smear.gate.copy_(w0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opts[1].step()  # zero gradient: Adam's update is 0, only p <- p(1 - lr*wd) remains
    lr = cfg.train.scalar_lr * f
    torch.testing.assert_close(model.smear.gate.detach(), w0 * (1 - lr * 0.04))


# ---------------------------------------------------------------------------
# Schedules


def test_lr_multiplier_boundaries():
    t = get_preset("gepa11").train  # 20000 steps, warmdown 8000, linear
    assert lr_multiplier(0, t) == 1.0
    assert lr_multiplier(11_999, t) == 1.0
    assert lr_multiplier(12_000, t) == 1.0
    assert lr_multiplier(16_000, t) == 0.5
    assert lr_multiplier(19_999, t) == pytest.approx(1 / 8000)
    assert lr_multiplier(20_000, t) == 0.0
    c = TrainConfig(lr_schedule="cosine")
    assert lr_multiplier(11_999, c) == 1.0 and lr_multiplier(12_000, c) == 1.0
    assert lr_multiplier(16_000, c) == pytest.approx(0.5)
    assert lr_multiplier(14_000, c) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert 0 < lr_multiplier(19_999, c) < 1e-7
    w = TrainConfig(lr_warmup=10)
    assert lr_multiplier(0, w) == pytest.approx(0.1) and lr_multiplier(9, w) == 1.0 and lr_multiplier(10, w) == 1.0
    # wall-clock form: the warmdown is the last 8000/20000 of a 100 s budget
    wc = TrainConfig(max_wallclock=100.0)
    assert lr_multiplier(10, wc, elapsed_s=59.0) == 1.0
    assert lr_multiplier(10, wc, elapsed_s=80.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_multiplier(0, TrainConfig(lr_schedule="step"))


def test_muon_momentum_warmup():
    t = get_preset("gepa11").train
    assert muon_momentum(0, t) == pytest.approx(0.92)
    assert muon_momentum(750, t) == pytest.approx(0.955)
    assert muon_momentum(1500, t) == pytest.approx(0.99)
    assert muon_momentum(3000, t) == pytest.approx(0.99)


def test_set_lr_applies_base_lr_times_multiplier(gepa11_model):
    t = get_preset("gepa11").train
    opts, _ = build_optimizers(gepa11_model, t)
    f = set_lr(opts, 16_000, t)
    assert f == 0.5
    for o in opts:
        for g in o.param_groups:
            assert g["lr"] == pytest.approx(0.5 * g["base_lr"])
            if isinstance(o, Muon):
                assert g["momentum"] == pytest.approx(0.99)


def test_ns_dtype_auto_is_chosen_by_the_device():
    """"auto": the submission's bf16 on CUDA and on CPUs with native bf16 matmuls, fp32 on CPUs
    that emulate them; explicit values pass through; the optimizer gets the resolved one."""
    from gepalib.muon import resolve_ns_dtype

    assert resolve_ns_dtype("auto", "cuda", native_bf16=False) == "bf16"
    assert resolve_ns_dtype("auto", "cpu", native_bf16=False) == "fp32"
    assert resolve_ns_dtype("auto", "cpu", native_bf16=True) == "bf16"
    for explicit in ("bf16", "fp32"):
        for dev in ("cpu", "cuda"):
            assert resolve_ns_dtype(explicit, dev, native_bf16=False) == explicit
    with pytest.raises(ValueError, match="muon_ns_dtype"):
        resolve_ns_dtype("fp16", "cpu")
    cfg = get_preset("tiny")
    assert cfg.train.muon_ns_dtype == "auto"
    from gepalib.model import GPT

    opts, _ = build_optimizers(GPT(cfg.model), cfg.train)
    want = resolve_ns_dtype("auto", "cpu")
    assert {g["ns_dtype"] for o in opts if isinstance(o, Muon) for g in o.param_groups} == {want}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_batched_newton_schulz_equals_the_per_matrix_iteration(dtype):
    """One batched product per iteration step over same-shape matrices gives each matrix's own
    result: within fp32 rounding in fp32 (bit-equal on the AVX-512 CPU it was written on), and
    Muon's batched and per-matrix steps move the weights alike."""
    from gepalib.muon import newton_schulz_batched

    g = torch.Generator().manual_seed(0)
    for shape in ((4, 32, 16), (3, 16, 48), (2, 24, 24)):
        G = torch.randn(*shape, generator=g) * torch.tensor([0.1, 1.0, 30.0, 2.0])[:shape[0], None, None]
        ref = torch.stack([zeropower_newton_schulz(m, 5, dtype=dtype) for m in G])
        out = newton_schulz_batched(G, 5, dtype=dtype)
        assert out.dtype == torch.bfloat16 and out.shape == G.shape
        # both end in a bf16 rounding: fp32 paths agree up to one bf16 ulp flip of a few entries
        tol = 1e-2 if dtype == "fp32" else 2e-2
        assert (out.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()
    with pytest.raises(ValueError, match="stack"):
        newton_schulz_batched(torch.randn(4, 4))

    def run(batched: bool) -> list[torch.Tensor]:
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(*s)) for s in ((16, 8), (16, 8), (8, 24), (16, 8), (8, 24))]
        opt = Muon(ps, lr=0.05, ns_dtype=dtype, ns_batched=batched)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        return [p.detach().clone() for p in ps]

    for a, b in zip(run(True), run(False)):
        assert torch.allclose(a, b, rtol=0, atol=5e-4)  # lr 0.05 x a few bf16 ulps of the update
