"""The overview page: percentages with their intervals, and the table's common columns moved to its caption."""
import pandas as pd

from cleanclip_core.overview import display_table, percent_with_interval, write_overview


def test_a_proportion_reads_as_a_percentage_with_its_interval():
    assert percent_with_interval(0.7429999709129333, 0.70125, 0.7856) == "74.3 [70.1, 78.6]"
    assert percent_with_interval(-0.05, -0.232, 0.127) == "-5.0 [-23.2, 12.7]"
    assert percent_with_interval(0.5, float("nan"), float("nan")) == "50.0"
    assert percent_with_interval(float("nan"), 0.1, 0.2) == "–"


def test_the_display_table_joins_each_metric_with_its_interval_and_lifts_constant_columns():
    frame = pd.DataFrame({
        "attack": ["badnet", "badnet"], "clean_method": ["cleanclip", "par"],
        "top1": [0.5, 0.5], "top1_low": [0.4, 0.45], "top1_high": [0.6, 0.55], "n_replicates": [3, 3],
    })
    shown, constant = display_table(frame)
    assert list(shown.columns) == ["clean_method", "top1"]
    assert list(shown.top1) == ["50.0 [40.0, 60.0]", "50.0 [45.0, 55.0]"]  # a constant metric stays
    assert constant == {"attack": "badnet", "n_replicates": "3"}


def test_the_overview_embeds_its_figures_and_renders_its_tables(tmp_path):
    tables = {}
    for name in ("summary_intervals", "comparisons", "stopping_rule_intervals"):
        tables[name] = tmp_path / f"{name}.csv"
        pd.DataFrame({"attack": ["badnet"], "top1": [0.25], "top1_low": [0.125], "top1_high": [0.375]}).to_csv(
            tables[name], index=False
        )
    figure = tmp_path / "fig2.png"
    figure.write_bytes(b"\x89PNG not really")
    page = tmp_path / "overview.html"
    write_overview(page, "Study s", {"attacks": ["badnet"], "seeds": [0, 1]}, tables, [figure], [])
    text = page.read_text()
    assert text.count("25.0 [12.5, 37.5]") == 3
    assert "data:image/png;base64,iVBORyBub3QgcmVhbGx5" in text
    assert "<b>seeds</b>: 0, 1" in text
