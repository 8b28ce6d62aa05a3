"""gepalib.findings.plots: every figure helper draws, saving is atomic and byte-stable."""
import numpy as np
import pytest

from gepalib import findings as F
from gepalib.findings import plots as P


@pytest.fixture(autouse=True)
def _style_and_cleanup():
    P.set_style()
    yield
    P.plt.close("all")


LEDGER = [{"stage": "float_live", "val_bpb": 2.4012}, {"stage": "float_ema", "val_bpb": 2.3988},
          {"stage": "int6_roundtrip", "val_bpb": 2.4153}, {"stage": "int6_sliding", "val_bpb": 2.3811},
          {"stage": "ttt", "val_bpb": None}]


def f1_figure():
    steps = np.arange(0, 601, 30)
    bpb = 3.0 - 0.8 * (1 - np.exp(-steps / 60)) - 0.0005 * np.clip(steps - 360, 0, None)
    return P.warmdown_figure(steps, bpb, F.phase_rates(steps, bpb, total_steps=600, warmdown=240))


def all_figures():
    sizes = [510e3, 500e3, 492e3]
    return {
        "f1": f1_figure(),
        "f2": P.compressibility_figure([200, 400, 600], sizes, F.compressibility([200, 400, 600], sizes)),
        "f3": P.optimizer_figure(F.ttt_gain_by_optimizer({"sgd": [-0.03, -0.032], "adamw": [-0.01]})),
        "f4": P.freezing_figure(F.ttt_gain_vs_frozen([0, 0, 1, 2], [-0.01, -0.011, -0.015, -0.012]), num_layers=6),
        "f5": P.ttt_share_figure(F.ttt_share([2.1, 2.0, 1.9], [2.0, 1.92, 1.84], 2.5), point_labels=["a", "b", "c"]),
        "ledger": P.stage_ledger_figure(LEDGER),
        "curves": P.training_curves_figure(
            [{"step": i, "train_loss": 5 - i / 200, "val_bpb": 3 - i / 400 if i % 100 == 0 else None}
             for i in range(0, 201, 20)]),
    }


def test_every_figure_draws_and_saves(tmp_path):
    for name, fig in all_figures().items():
        (png,) = P.save_figure(fig, name, tmp_path, formats=("png",), dpi=40, close=True)
        assert png == tmp_path / f"{name}.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not P.plt.fignum_exists(fig.number)  # close=True closed it
    assert not list(tmp_path.glob(".*.tmp")), "no temp files left behind"


def test_save_twice_gives_identical_bytes(tmp_path):
    paths = P.save_figure(f1_figure(), "warmdown", tmp_path, dpi=60)
    assert [p.name for p in paths] == ["warmdown.png", "warmdown.pdf"]
    first = [p.read_bytes() for p in paths]
    assert first[1].startswith(b"%PDF") and b"CreationDate" not in first[1] and b"Matplotlib" not in first[1]
    assert b"Matplotlib version" not in first[0]
    P.save_figure(f1_figure(), "warmdown", tmp_path, dpi=60)  # a rerun rebuilds the figure
    assert [p.read_bytes() for p in paths] == first
    assert len(list(tmp_path.iterdir())) == 2


def test_save_figure_rejects_bad_names_and_formats(tmp_path):
    fig, _ = P.new_figure(1)
    with pytest.raises(ValueError, match="bad figure name"):
        P.save_figure(fig, "../escape", tmp_path)
    with pytest.raises(ValueError, match="bad figure name"):
        P.save_figure(fig, "fig.png", tmp_path)
    with pytest.raises(ValueError, match="unsupported format"):
        P.save_figure(fig, "fig", tmp_path, formats=("bmp",))
    assert not list(tmp_path.iterdir())


def _texts_outside(fig) -> list[str]:
    """How the drawn content (tick labels, axis labels, titles, legends) leaves the canvas:
    [] when the figure's tight bounding box lies within it."""
    fig.canvas.draw()
    bb = fig.get_tightbbox(fig.canvas.get_renderer())  # inches; only what is drawn
    W, H = fig.get_size_inches()
    tol = 0.5 / fig.dpi
    return [side for side, out in (("left", bb.x0 < -tol), ("bottom", bb.y0 < -tol), ("right", bb.x1 > W + tol),
                                   ("top", bb.y1 > H + tol)) if out]


def _png_size(path) -> tuple[int, int]:
    import struct

    w, h = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
    return w, h


def test_save_figure_keeps_every_label_on_the_canvas(tmp_path):
    # a figure made outside new_figure (as pandas' .plot does): long tick labels stick out on the left
    fig = P.plt.figure(figsize=(5, 2.5))
    ax = fig.add_subplot()
    ax.barh(range(3), [1.0, 2.0, 3.0])
    ax.set_yticks(range(3), ["a long stage name: int6_roundtrip", "float_live (EMA weights)", "ttt"])
    ax.set_xlabel("val_bpb")
    ax.set_ylabel("stage")
    assert _texts_outside(fig), "the test figure must start with clipped labels"
    P.save_figure(fig, "long_ticks", tmp_path, formats=("png",), dpi=50)
    assert fig.get_layout_engine() is not None and _texts_outside(fig) == []
    # every figure helper's output fits its canvas
    for name, f in all_figures().items():
        P.fit_layout(f)
        assert _texts_outside(f) == [], name


def test_save_figure_grows_the_image_for_a_label_wider_than_the_figure(tmp_path):
    fig = P.plt.figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("a label far wider than this small three-inch figure could ever hold")
    (png,) = P.save_figure(fig, "wide", tmp_path, formats=("png",), dpi=fig.dpi)
    renderer = fig.canvas.get_renderer()
    label = ax.xaxis.label.get_window_extent(renderer)
    assert label.width > fig.bbox.width  # constrained layout cannot shrink text ...
    w, h = _png_size(png)
    assert w >= label.width  # ... so the tight bounding box keeps all of it
    assert w > fig.bbox.width  # wider than the figure itself


def test_stage_ledger_figure_titles_and_labels_its_bars():
    fig = P.stage_ledger_figure(LEDGER, title="tiny-abc: stage ledger")
    (ax,) = fig.axes
    assert fig.get_suptitle() == "tiny-abc: stage ledger"
    ys = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert sorted(ys, key=ys.get, reverse=True) == ["float_live", "float_ema", "int6_roundtrip",
                                                    "int6_sliding"]  # ledger order, first on top
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["2.3811", "2.3988", "2.4012", "2.4153"]
    lo, hi = ax.get_xlim()
    assert lo < 2.3811 and hi > 2.4153
    import pandas as pd

    from_df = P.stage_ledger_figure(pd.DataFrame(LEDGER))
    assert len(from_df.axes[0].patches) == 4
    with pytest.raises(ValueError, match="no stage"):
        P.stage_ledger_figure([{"stage": "ttt", "val_bpb": None}])
