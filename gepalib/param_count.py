"""Parameter accounting: the component each GPT parameter belongs to, by its state-dict name, and
the count per component (docs/model.md; ``gepa info`` prints it)."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

BREAKDOWN_KEYS = ("tok_emb", "bigram", "smear", "skips", "value_embed",
                  "blocks.attn_matrices", "blocks.mlp_matrices", "blocks.vectors")


def component_of(name: str) -> str:
    """Which BREAKDOWN_KEYS component a parameter name belongs to (DDP/compile prefixes ignored)."""
    for wrapper in ("module.", "_orig_mod."):
        while name.startswith(wrapper):
            name = name[len(wrapper):]
    if name.startswith("blocks."):
        if name.endswith(("attn.q.weight", "attn.k.weight", "attn.v.weight", "attn.out.weight")):
            return "blocks.attn_matrices"
        if name.endswith(("mlp.up.weight", "mlp.down.weight")):
            return "blocks.mlp_matrices"
        return "blocks.vectors"
    for prefix, comp in (("tok_emb.", "tok_emb"), ("bigram.", "bigram"), ("smear.", "smear"),
                         ("skip_", "skips"), ("ve.", "value_embed")):
        if name.startswith(prefix):
            return comp
    raise KeyError(f"parameter {name!r} has no component")


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter count per component (docs/model.md), plus 'blocks' and 'total'."""
    out = OrderedDict((k, 0) for k in BREAKDOWN_KEYS)
    for name, p in model.named_parameters():
        out[component_of(name)] += p.numel()
    out["blocks"] = sum(v for k, v in out.items() if k.startswith("blocks."))
    out["total"] = sum(p.numel() for p in model.parameters())
    return dict(out)
