"""Full-Hessian GPTQ: ``quant_mode="gptq"`` (see docs/quantization.md).

GPTQ-lite rounds every weight to its nearest int6 code. GPTQ instead quantizes a Linear's
weight W (out x in) one input column at a time and spreads each column's rounding error over
the columns not yet quantized, so that the layer's *output* on calibration inputs X moves as
little as possible. With the layer-input Hessian

    H = 2 X^T X / n        (n calibration tokens; X are the Linear's inputs)

the output error of a row w is (w - q) H (w - q)^T / 2 per token. The recursion (Frantar et
al., 2022) uses U, the upper Cholesky factor of (H + damp * mean(diag H) * I)^-1:

    for column j:  q_j = clamp(round(w_j / s), -32, 31) * s
                   e   = (w_j - q_j) / U_jj
                   w_{j+1:} -= e * U_{j, j+1:}

processed in blocks of ``gptq_block_size`` columns whose updates to the later columns are
applied once per block (lazy batch updates; the same arithmetic, reordered). Columns with
diag(H) = 0 (inputs that were always zero) get H_jj = 1, so they round to nearest.
``gptq_act_order`` quantizes the columns in order of decreasing diag(H).

Scales: the same int6 range and per-row fp16 scales as GPTQ-lite. Every row's scale is one of
GPTQ-lite's 15 percentile candidates; rows are independent under the recursion, so all 15
run at once and each row keeps the candidate whose damped output error (the recursion's own
sum of e^2) is smallest (ties: the earlier candidate). A row then takes GPTQ-lite per_row's
codes instead where their output error under the calibration Hessian, (w - q s) H (w - q s)^T,
is strictly smaller, so no row's calibration output error exceeds ``quant_mode="per_row"``'s.
The result is stored exactly as ``per_row`` stores it (codes, fp16 scales, the row's candidate):
the artifact format and its loader are unchanged.

Which tensors: the weight of every ``nn.Linear`` of :class:`gepalib.model.GPT` that GPTQ-lite
would quantize (the blocks' q/k/v/out/up/down, the bigram and value-embedding projections).
Tensors that are no Linear's weight -- ``tok_emb.weight`` (the input embedding, tied to the
output head), ``bigram.embed.weight``, ``ve.embed.weight`` -- keep GPTQ-lite ``per_row``,
except that ``gptq_tied_head`` quantizes ``tok_emb.weight`` as the output head's weight: its
Hessian is that of the head's input RMSNorm(x_L) (the last block's output, normalised; the
head's 1/softcap factor scales H, which changes nothing). Its role as the input embedding is
then left to the damping.

Calibration (:func:`calibration_hessians`) runs the float model in fp32 (on the CPU unless a
device is given; ``gepa quantize`` uses the run's device) over
``gptq_calib_batches`` micro-batches (``micro_batch_tokens`` each) from the start of the
*training* stream (:class:`gepalib.data.TrainLoader`, the run's ``train_shards``); the
validation shards are never read.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from gepalib.config import RunConfig
from gepalib.paths import resolve_path
from gepalib.data import TrainLoader
from gepalib.model import GPT, rms_norm
from gepalib.quant.gptq import EMBED_NAME
from gepalib.quant.gptq_full import DAMP_RETRIES, gptq_codes, gptq_per_row, inverse_cholesky, output_error  # noqa: F401



# ---------------------------------------------------------------------------
# Hessians from forward hooks


class HessianCollector:
    """Forward hooks on every ``nn.Linear`` of ``model`` accumulating sum x x^T (float64) of its
    inputs. Linears fed the very same tensor (attention's q, k and v) share one product."""

    def __init__(self, model: nn.Module, tied_head: bool = False):
        self.sums: dict[str, Tensor] = {}
        self.count: dict[str, int] = {}
        self._last: tuple[Tensor, Tensor] | None = None  # (input, its x^T x): identity-shared
        self._handles = [mod.register_forward_hook(self._hook(f"{name}.weight")) for name, mod in model.named_modules()
                         if isinstance(mod, nn.Linear)]
        if tied_head:  # GPT's head: logits ~ RMSNorm(x_L) @ tok_emb^T, x_L the last block's output
            self._handles.append(model.blocks[-1].register_forward_hook(self._hook(EMBED_NAME, head=True)))

    def _hook(self, weight_name: str, head: bool = False) -> Callable:
        def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
            x = rms_norm(output.float()) if head else inputs[0]
            if self._last is not None and self._last[0] is x:
                xtx = self._last[1]
            else:
                x2 = x.detach().reshape(-1, x.shape[-1]).float()
                xtx = (x2.T @ x2).double().cpu()
                self._last = (x, xtx)
            n = math.prod(x.shape[:-1])
            if weight_name in self.sums:
                self.sums[weight_name] += xtx
                self.count[weight_name] += n
            else:
                self.sums[weight_name] = xtx.clone()
                self.count[weight_name] = n

        return hook

    def hessians(self) -> dict[str, Tensor]:
        """{Linear weight name: H = 2 X^T X / n} (float64, [in, in])."""
        return {k: 2.0 * s / self.count[k] for k, s in self.sums.items()}

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self._last = [], None


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor], chunk_seqs: int = 0,
                     tied_head: bool = False) -> dict[str, Tensor]:
    """Run ``model`` (fp32, no autocast, eval mode) on each [B, T] token batch and return the
    layer-input Hessian of every Linear weight (and with ``tied_head`` of GPT's tied output head,
    under ``tok_emb.weight``). ``chunk_seqs`` > 0 feeds batches in pieces of that many sequences
    (bounded activation memory; the same sums)."""
    was_training = model.training
    model.eval()
    col = HessianCollector(model, tied_head)
    try:
        for x in batches:
            step = chunk_seqs if chunk_seqs > 0 else x.shape[0]
            for i in range(0, x.shape[0], step):
                col._last = None
                model(x[i:i + step])
    finally:
        col.close()
        model.train(was_training)
    return col.hessians()


def train_shards_read(loader: TrainLoader, tokens: int) -> list[str]:
    """Names of the train shards the first ``tokens`` stream tokens come from (wrapping)."""
    names, i, left = [], 0, tokens
    while left > 0 and len(names) < len(loader.files):
        c = loader.counts[i % len(loader.files)]
        if c:
            names.append(loader.files[i % len(loader.files)].name)
        left -= c
        i += 1
    return names


def calibration_hessians(cfg: RunConfig, sd: dict[str, Tensor], *, device: str | torch.device = "cpu",
                         log: Callable[[str], Any] | None = None) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Hessians of ``GPT(cfg.model)`` holding ``sd`` on ``gptq_calib_batches`` training
    micro-batches -> (hessians, info). ``info`` records the data directory, split, shard files,
    batches, tokens and seconds (stored with the artifact's facts)."""
    t0 = time.perf_counter()
    data_dir = resolve_path(cfg.data.data_dir)
    loader = TrainLoader(data_dir, vocab_size=cfg.model.vocab_size, train_shards=cfg.data.train_shards)
    tcfg, nb = cfg.train, cfg.quant.gptq_calib_batches
    batches = [loader.next_batch(tcfg.micro_batch_tokens, tcfg.seq_len)[0] for _ in range(nb)]
    model = GPT(cfg.model)
    model.load_state_dict(sd, strict=True)
    model = model.float().to(device)  # fp32 (a bf16 embedding table too), no autocast
    hess = collect_hessians(model, (b.to(device) for b in batches), chunk_seqs=cfg.eval.eval_batch_seqs,
                            tied_head=cfg.quant.gptq_tied_head)
    info = {"split": "train", "data_dir": str(data_dir), "files": train_shards_read(loader, loader.tokens_read),
            "batches": nb, "tokens": nb * tcfg.micro_batch_tokens, "device": str(device),
            "layers": len(hess), "seconds": time.perf_counter() - t0}
    if log is not None:
        log(f"gptq_calibration split:train batches:{nb} tokens:{info['tokens']} layers:{len(hess)} "
            f"files:{','.join(info['files'])} seconds:{info['seconds']:.2f}")
    return hess, info
