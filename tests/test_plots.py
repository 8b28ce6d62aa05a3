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
