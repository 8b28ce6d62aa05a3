"""The GPU code paths, exercised on the CPU: one host sync per training step, rank agreement on
the initial weights, DDP's fp32 bucket averaging against the flat all-reduce, compiled
Newton-Schulz and validation (CUDA only), the CUDA math settings, and the submission's bf16
numerics (under CPU bf16 autocast; fp32 unchanged)."""
from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from gepalib import dist
from gepalib import model as M
from gepalib import muon as MU
from gepalib.config import ModelConfig, get_preset, override
from gepalib.train import Trainer, reduce_grads

GEPALIB = str(Path(M.__file__).resolve().parent)
MICRO = dict(num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1, mlp_hidden=128, ve_layers=(1,),
             xsa_last_n=1, bigram_buckets=256, bigram_dim=16, ve_dim=16, rope_dims=8, seq_len=64,
             batch_tokens=512, micro_batch_tokens=256, val_tokens=1024, steps=4, warmdown=2,
             muon_momentum_warmup=2, val_every=2, log_every=1, checkpoint_every=0, progress="log")
MINI = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=64,
                   rope_dims=4, rope_train_seq_len=16, bigram_buckets=32, bigram_dim=8, xsa_last_n=2,
                   ve_layers=(1,), ve_dim=8, embed_dtype="bfloat16")


def micro_cfg(data_dir, **kw):
    return override(get_preset("tiny"), data_dir=str(data_dir), **{**MICRO, **kw})


def perturbed(cfg: ModelConfig, seed: int = 0) -> M.GPT:
    torch.manual_seed(seed)
    m = M.GPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p.float()).to(p.dtype))
    return m


# ---------------------------------------------------------------------------
# One host sync per step


def test_a_training_step_syncs_with_the_host_once(sotu_data_dir, tmp_path, monkeypatch):
    """Each value read back from a tensor (``.item()``, ``.tolist()``, ``float()``, ``int()``,
    ``bool()``) is a device sync on a GPU; gepalib's step code reads one, whatever the step."""
    torch.set_num_threads(1)
    calls: list[str] = []
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            caller = inspect.currentframe().f_back
            if caller.f_code.co_filename.startswith(GEPALIB):
                calls.append(f"{_name} {caller.f_code.co_filename}:{caller.f_lineno}")
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with Trainer(micro_cfg(sotu_data_dir), tmp_path / "run") as t:
        for _ in range(3):
            calls.clear()
            t.step()
            assert len(calls) == 1 and calls[0].startswith("tolist") and "train.py" in calls[0], calls
        assert t.train_time > 0 and t.elapsed >= t.train_time


def test_the_steps_one_sync_comes_after_the_optimizers_are_queued(sotu_data_dir, tmp_path, monkeypatch):
    """The device is read once the optimizers' kernels are queued (no bubble while the host
    decides); a non-finite step then fails the trainer, which saves nothing more."""
    torch.set_num_threads(1)
    order: list[str] = []
    orig = torch.Tensor.tolist

    def tolist(self, *a, **k):
        if inspect.currentframe().f_back.f_code.co_filename.startswith(GEPALIB):
            order.append("sync")
        return orig(self, *a, **k)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    with Trainer(micro_cfg(sotu_data_dir), tmp_path / "run") as t:
        for o in t.optimizers:
            real = o.step
            monkeypatch.setattr(o, "step", lambda *a, _real=real, **k: order.append("opt") or _real(*a, **k))
        t.step()
        assert order == ["opt"] * len(t.optimizers) + ["sync"], order
        t.failed = "non-finite train loss (nan) at step 2/4"  # as _fail leaves it
        with pytest.raises(RuntimeError, match="failed"):
            t.step()
        with pytest.raises(RuntimeError, match="not saved"):
            t.save()


def test_val_ema_off_skips_the_periodic_ema_evaluations(sotu_data_dir, tmp_path):
    """val_ema=False: periodic validation scores the live weights only; step 0 (EMA = init) and
    the final evaluation still give the EMA number, and the stage ledger is complete."""
    from gepalib.rundir import RunDir
    from gepalib.train import train

    torch.set_num_threads(1)
    summary = train(micro_cfg(sotu_data_dir, val_ema=False, steps=6, warmdown=2), tmp_path / "run")
    rows = [r for r in RunDir(tmp_path / "run").read_metrics() if "val_bpb" in r]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    assert ["val_bpb_ema" in r for r in rows] == [True, False, False, True]
    assert {"float_live", "float_ema"} <= set(summary["stages"])


# ---------------------------------------------------------------------------
# Compile: the model on any device when asked, validation and Newton-Schulz on CUDA only


def test_compiled_graphs_are_used_for_validation_on_cuda_only(sotu_data_dir, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    with Trainer(micro_cfg(sotu_data_dir, compile=True), tmp_path / "run") as t:
        assert t.fwd is t.compiled and t.compiled is not None
        assert t.eval_live is t.model and t.eval_ema is t.eval_model  # eager on the CPU
    # CUDA without triton: eager, and said so (train.log gets the note)
    fake = SimpleNamespace(dev=torch.device("cuda"), notes=[])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else object())
    assert Trainer._compiled(fake, torch.nn.Linear(2, 2)) is None
    assert fake.notes == ["compile: triton is not installed, so the model runs eagerly"]


def test_gepa11_compiles_with_the_submissions_warmup():
    t = get_preset("gepa11").train
    assert (t.compile, t.compile_warmup) == (True, 20)
    assert not get_preset("tiny").train.compile and get_preset("tiny").train.compile_warmup == 0


def test_newton_schulz_is_compiled_on_cuda_and_eager_on_the_cpu(monkeypatch):
    assert MU.newton_schulz_fn("cpu") is MU._newton_schulz
    monkeypatch.setattr(MU, "_NS_COMPILED", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "triton" else real(name, *a))
    fn = MU.newton_schulz_fn("cuda")
    assert fn is not MU._newton_schulz and MU.newton_schulz_fn("cuda") is fn  # compiled once
    G = torch.randn(24, 40, generator=torch.Generator().manual_seed(0))
    try:  # the compiled graph (inductor's CPU backend here) computes the same bf16 iteration
        got = fn(G, 5, 1e-7)
    except Exception as e:  # noqa: BLE001 -- no C++ toolchain for inductor on this machine
        pytest.skip(f"inductor cannot compile on this CPU: {type(e).__name__}")
    want = MU._newton_schulz(G, 5, 1e-7)
    assert got.dtype == torch.bfloat16 and got.shape == G.shape
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_cuda_settings_pin_flash_and_tf32():
    mm, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    new_api = hasattr(mm, "fp32_precision")  # torch >= 2.9: the legacy allow_tf32 flags are not mixed in
    flags = ((mm.fp32_precision, conv.fp32_precision) if new_api else (mm.allow_tf32, torch.backends.cudnn.allow_tf32),
             torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled(),
             torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    try:
        dist.cuda_settings()
        if new_api:
            assert mm.fp32_precision == "tf32" and conv.fp32_precision == "tf32"
        else:
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()  # fallbacks
    finally:
        if new_api:
            mm.fp32_precision, conv.fp32_precision = flags[0]
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[0]
        torch.backends.cuda.enable_flash_sdp(flags[1])
        torch.backends.cuda.enable_cudnn_sdp(flags[2])


def test_tf32_falls_back_to_the_legacy_flags_on_older_torch(monkeypatch):
    """torch without ``fp32_precision``: the allow_tf32 flags (set on stand-ins here)."""
    from types import SimpleNamespace as NS

    legacy = NS(cuda=NS(matmul=NS(allow_tf32=False)), cudnn=NS(allow_tf32=False))
    monkeypatch.setattr(dist.torch, "backends", legacy)
    assert dist.set_tf32() == "allow_tf32"
    assert legacy.cuda.matmul.allow_tf32 and legacy.cudnn.allow_tf32


# ---------------------------------------------------------------------------
# Replicas and DDP


def test_tensor_checksums_see_every_bit_and_position():
    g = torch.Generator().manual_seed(0)
    sd = {"w": torch.randn(5, 7, generator=g), "e": torch.randn(9, generator=g).bfloat16(), "s": torch.tensor(0.1),
          "i": torch.arange(6), "b": torch.tensor([True, False]), "empty": torch.zeros(0)}
    c = dist.tensor_checksums(sd)
    assert c.dtype == torch.int64 and c.shape == (6, 2)
    assert torch.equal(c, dist.tensor_checksums({k: v.clone() for k, v in sd.items()}))
    # by hand for one tensor: int16 words, and weighted by position % 251 + 1
    words = sd["w"].view(torch.int16).reshape(-1).long()
    assert c[0].tolist() == [int(words.sum()), int((words * (torch.arange(words.numel()) % 251 + 1)).sum())]
    flipped = sd["w"].clone()
    flipped.view(torch.int32)[2, 3] ^= 1  # the last mantissa bit
    swapped = sd["e"].clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    for k, v in (("w", flipped), ("e", swapped), ("s", torch.tensor(0.1000001)), ("i", torch.arange(6).flip(0))):
        other = dist.tensor_checksums({**sd, k: v})
        assert not torch.equal(other[list(sd).index(k)], c[list(sd).index(k)]), k


def _two_ranks(rank: int, init: str, out: str) -> None:
    """Worker of the 2-process gloo checks (module level: spawn pickles it)."""
    import torch.distributed as tdist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.set_num_threads(1)
    res = {}
    try:
        # 1. the replicas check: equal weights pass, one differing tensor fails on both ranks
        torch.manual_seed(0)
        m = M.GPT(MINI)
        dist.check_replicas(m.state_dict(), "the initial weights")
        sd = {k: v.clone() for k, v in m.state_dict().items()}
        if rank == 1:
            sd["blocks.1.attn.q.weight"][0, 0] += 1e-3
        try:
            dist.check_replicas(sd, "the initial weights")
            res["mismatch"] = "no error"
        except RuntimeError as e:
            res["mismatch"] = str(e)
        # 2. DDP (fp32 buckets) against the flat fp32 all-reduce, over two accumulated micro-steps
        ddp_model, flat_model = M.GPT(MINI), M.GPT(MINI)
        flat_model.load_state_dict(m.state_dict())
        ddp_model.load_state_dict(m.state_dict())
        ddp = dist.data_parallel(ddp_model, torch.device("cpu"))
        g = torch.Generator().manual_seed(10 + rank)
        batches = [torch.randint(0, MINI.vocab_size, (2, 13), generator=g) for _ in range(2)]
        for i, x in enumerate(batches):
            ddp.require_backward_grad_sync = i == 1
            (ddp(x[:, :-1], x[:, 1:]) / 2).backward()
            (flat_model(x[:, :-1], x[:, 1:]) / 2).backward()
        reduce_grads(list(flat_model.parameters()), torch.zeros(1, dtype=torch.float64))
        pairs = [(a.grad, b.grad) for a, b in zip(ddp_model.parameters(), flat_model.parameters())]
        res["grads_equal"] = all(torch.equal(a, b) for a, b in pairs)
        res["grad_dtypes"] = sorted({str(a.dtype) for a, _ in pairs})
        res["extras"] = reduce_grads([], torch.tensor([float(rank), 1.0], dtype=torch.float64)).tolist()
    finally:
        torch.save(res, f"{out}.{rank}")
        tdist.destroy_process_group()


def test_two_gloo_ranks_check_replicas_and_ddp_matches_the_flat_reduce(tmp_path):
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_two_ranks, args=(init, str(tmp_path / "res")), nprocs=2, join=True)
    res = [torch.load(f"{tmp_path / 'res'}.{r}") for r in (0, 1)]
    for r in res:
        assert "disagree on the initial weights: 1 of" in r["mismatch"] and "blocks.1.attn.q.weight" in r["mismatch"]
        assert r["grads_equal"], "DDP's fp32 buckets must give the flat all-reduce's gradients"
        assert r["grad_dtypes"] == ["torch.bfloat16", "torch.float32"]  # the bf16 table went through fp32
        assert r["extras"] == [0.5, 1.0]


# ---------------------------------------------------------------------------
# bf16 numerics: the submission's dtypes under autocast, fp32 unchanged


def fp32_policy(x, shape, *a, _orig=F.rms_norm, **k):
    """F.rms_norm as CUDA autocast runs it since torch 2.12 (fp32 cast policy)."""
    return _orig(x.float() if torch.is_autocast_enabled(x.device.type) else x, shape, *a, **k)


def test_rms_norm_keeps_its_input_dtype_under_the_fp32_autocast_policy(monkeypatch):
    x = (torch.randn(3, 5, 32) * 0.1).bfloat16()
    want = F.rms_norm(x, (32,))
    monkeypatch.setattr(F, "rms_norm", fp32_policy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = M.rms_norm(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=0, rtol=2 ** -8)
    y = torch.randn(3, 5, 32)
    assert torch.equal(M.rms_norm(y), F.rms_norm(y, (32,)))  # fp32 as before


@pytest.mark.parametrize("policy", ["native", "fp32 (torch >= 2.12 CUDA)"])
def test_bf16_autocast_dtypes_follow_the_submission(policy, monkeypatch):
    """Under bf16 autocast: a bf16 residual stream into every block, q and k both bf16 at RoPE,
    XSA computed in fp32, the softcapped logits rounded to bf16 (tanh in bf16), returned fp32."""
    if policy != "native":
        monkeypatch.setattr(F, "rms_norm", fp32_policy)
    m = perturbed(MINI)
    seen = {"block": set(), "rope": set(), "xsa_in": set(), "xsa_out": set()}
    for b in m.blocks:
        b.register_forward_pre_hook(lambda mod, args: seen["block"].add(args[0].dtype))
    rope, xsa = M.apply_rope, M.xsa

    def rec_rope(x, cos, sin):
        seen["rope"].add(x.dtype)
        return rope(x, cos, sin)

    def rec_xsa(y, v):
        seen["xsa_in"].update((y.dtype, v.dtype))
        out = xsa(y, v)
        seen["xsa_out"].add(out.dtype)
        return out

    monkeypatch.setattr(M, "apply_rope", rec_rope)
    monkeypatch.setattr(M, "xsa", rec_xsa)
    idx = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(idx)
        loss = m(idx, idx)
    assert seen == {"block": {torch.bfloat16}, "rope": {torch.bfloat16}, "xsa_in": {torch.bfloat16},
                    "xsa_out": {torch.float32}}
    assert logits.dtype == torch.float32 and loss.dtype == torch.float32
    assert torch.equal(logits, logits.bfloat16().float())  # cap * tanh(z) rounded to bf16, as the submission
    with torch.no_grad():
        fp = m(idx)
    assert not torch.equal(fp, fp.bfloat16().float())  # fp32 logits are not rounded


def test_xsa_runs_in_fp32_and_is_unchanged_in_fp32():
    g = torch.Generator().manual_seed(0)
    y, v = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    # the formula before the change, in the input dtype
    vv, yy = v.unsqueeze(2), y.view(2, 2, 2, 5, 8)
    coef = (yy * vv).sum(-1, keepdim=True) / vv.square().sum(-1, keepdim=True).clamp_min(1e-24)
    old = torch.addcmul(yy, coef, vv, value=-1.0).view(2, 4, 5, 8)
    assert torch.equal(M.xsa(y, v), old)
    yb, vb = y.bfloat16(), v.bfloat16()
    out = M.xsa(yb, vb)
    assert out.dtype == torch.float32 and torch.equal(out, M.xsa(yb.float(), vb.float()))
    # what remains is orthogonal to the token's own value, to fp32 precision
    proj = (out.view(2, 2, 2, 5, 8) * vb.float().unsqueeze(2)).sum(-1)
    assert proj.abs().max() < 1e-5
