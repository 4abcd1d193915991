"""fig2's points and figures, from trajectories written by hand."""

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text

from cleanclip_core.errors import UserError
from cleanclip_core.plots.cleaning import (
    facet_title, fig2_points, plot_contamination, plot_fig2, plot_trajectories, save_figure,
)

OBJECTIVES = ["mmcl", "mmcl_ssl", "ssl_only"]


def trajectories() -> pd.DataFrame:
    """Three pretrained models, each cleaned at two learning rates for three epochs."""
    rows = []
    for objective, start in zip(OBJECTIVES, (0.5, 0.6, 0.4)):
        for lr in (0.001, 0.003):
            for epoch in range(4):
                rows.append({
                    "run_id": f"{objective}/{lr}", "pretrain_objective": objective, "clean_method": "cleanclip",
                    "lr": lr, "epoch": epoch, "top1": start + 0.01 * epoch, "asr_top1": max(0.0, 0.9 - 0.2 * epoch * lr * 1000),
                })
    return pd.DataFrame(rows)


def summary() -> pd.DataFrame:
    """The summary intervals' columns the contamination figure draws: two attacks, two
    objectives, 0 to 5 poisons in the cleaning set; no epoch of MMCL+SSL gets ASR@1 to 5% with
    poisons."""
    rows = []
    for attack in ("badnet", "blended"):
        for objective in ("mmcl", "mmcl_ssl"):
            for k in (0, 1, 5):
                best = 0.5 if objective == "mmcl" or k == 0 else None
                rows.append({
                    "attack": attack, "pretrain_objective": objective, "clean_method": "cleanclip", "cleaning_poisons": k,
                    "best_top1": best, "best_top1_low": best and best - 0.1, "best_top1_high": best and best + 0.05,
                    "lowest_asr_top1": 0.02 * k, "lowest_asr_top1_low": 0.01 * k, "lowest_asr_top1_high": 0.03 * k,
                })
    return pd.DataFrame(rows)


def test_fig2_has_a_start_per_panel_and_a_point_per_lr_and_epoch():
    points = fig2_points(trajectories(), ["mmcl", "mmcl_ssl"])
    assert list(points.panel.unique()) == ["mmcl", "mmcl_ssl"]
    for panel in ("mmcl", "mmcl_ssl"):
        in_panel = points[points.panel == panel]
        starts = in_panel[in_panel.epoch == 0]
        assert len(starts) == 1 and starts.lr.isna().all()
        cleaned = in_panel[in_panel.epoch > 0]
        assert sorted(zip(cleaned.lr, cleaned.epoch)) == [(lr, e) for lr in (0.001, 0.003) for e in (1, 2, 3)]


def clipped(figure: Figure) -> list[str]:
    """The title and legends of a drawn figure that stick out of it, by their first text."""
    FigureCanvasAgg(figure).draw()
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend()]
    shown = [c for c in figure.get_children() if isinstance(c, Legend) or (isinstance(c, Text) and c.get_text())]
    inside = figure.bbox
    return [
        repr(artist.get_texts()[0].get_text() if isinstance(artist, Legend) else artist.get_text())
        for artist in shown + legends
        if not (inside.x0 <= (e := artist.get_window_extent()).x0 and e.x1 <= inside.x1
                and inside.y0 <= e.y0 and e.y1 <= inside.y1)
    ]


def legend_texts(figure: Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


@pytest.mark.parametrize("panels", [1, 2, 3])
def test_fig2_shows_its_whole_title_and_legend_with_any_number_of_panels(panels):
    objectives = OBJECTIVES[:panels]
    facet = facet_title({"attack": "label_consistent", "cleaning_poisons": 25})
    figure = plot_fig2(fig2_points(trajectories(), objectives), objectives, facet)
    assert clipped(figure) == []
    assert {"lr 0.001", "lr 0.003", "poisoned start", "successful cleaning", "attack floor"} <= set(legend_texts(figure))


@pytest.mark.parametrize("panels", [1, 2, 3])
def test_the_trajectories_figure_shows_its_whole_title_and_legend_with_any_number_of_panels(panels):
    objectives = OBJECTIVES[:panels]
    facet = facet_title({"attack": "label_consistent", "cleaning_poisons": 25})
    assert clipped(plot_trajectories(trajectories(), objectives, facet)) == []


def test_fig2_of_an_objective_without_cleaning_runs_is_a_user_error():
    with pytest.raises(UserError, match="no cleaning run of the 'ssl'-pretrained model"):
        fig2_points(trajectories(), ["mmcl", "ssl"])


def test_figures_are_written_as_pdf_and_png_with_the_same_bytes_each_time(tmp_path):
    points = fig2_points(trajectories(), ["mmcl", "mmcl_ssl"])
    for name in ("a", "b"):
        save_figure(plot_fig2(points, ["mmcl", "mmcl_ssl"], "badnet"), tmp_path / f"{name}.pdf")
        save_figure(plot_trajectories(trajectories(), ["mmcl", "mmcl_ssl"], "badnet"), tmp_path / f"{name}.png")
        save_figure(plot_contamination(summary()), tmp_path / f"{name}_contamination.pdf")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()
    assert (tmp_path / "a_contamination.pdf").read_bytes() == (tmp_path / "b_contamination.pdf").read_bytes()
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_the_contamination_figure_of_one_attack_shows_its_whole_title_and_legend():
    one_attack = summary()[lambda s: s.attack == "badnet"]
    assert clipped(plot_contamination(one_attack)) == []
