"""Figures of the cleaning study, drawn from the results database.

fig2 follows Verma et al.'s Figure 2: a panel per pretraining objective, clean zero-shot top-1
against ASR@1, a point per (learning rate, cleaning epoch) joined into each run's path (each
replicate's own), the poisoned start as a red star and the region of successful cleaning shaded.
The trajectories figure follows every cleaning run epoch by epoch, a line per replicate. Both
exist per facet of the study (attack x poisons in the cleaning set). The points of fig2 are
written beside it, so what was drawn can be checked. The contamination figure follows Verma et
al.'s ablation over the poisons left in the cleaning set, each point a cell's mean over its
replicates with its 95% interval. The stopping rules' figure shows, per pretraining objective,
which checkpoint each rule keeps. The pretraining curve shows whether the poisoned models that
cleaning starts from had converged. The success threshold is the study's (table criteria).
"""

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from cleanclip_core.errors import UserError
from cleanclip_core.results import Criteria, query
from cleanclip_core.stopping import STOPPING_RULES
from cleanclip_core.tables import atomic_output, write_csv

OBJECTIVE_TITLES = {"mmcl": "MMCL", "mmcl_ssl": "MMCL+SSL", "roclip": "RoCLIP", "safeclip": "SafeCLIP", "filtered": "filtered"}
METHOD_MARKERS = "osD^vP*X"
# Successful cleaning: the backdoor gone (ASR@1 at most the success threshold of the summary and
# the stopping rules) and at least 80% of the start's clean top-1 kept.
SUCCESS_ACCURACY_FRACTION = 0.8
PANEL_INCHES = 4.2


def objective_title(objective: str) -> str:
    return f"{OBJECTIVE_TITLES.get(objective, objective)}-pretrained"


def fig2_points(trajectories: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """The points fig2 draws: per panel (pretraining objective) its start (epoch 0, no method or
    learning rate) and one point per cleaning run (`run_id`: method, learning rate, replicate)
    and epoch."""
    missing = [o for o in objectives if o not in set(trajectories.pretrain_objective)]
    if missing:
        raise UserError(f"the results database has no cleaning run of the {missing[0]!r}-pretrained model")
    columns = ["panel", "run_id", "clean_method", "lr", "epoch", "top1", "asr_top1"] + (
        ["n_classes"] if "n_classes" in trajectories else []
    )
    frame = trajectories[trajectories.pretrain_objective.isin(objectives)].rename(
        columns={"pretrain_objective": "panel"}
    )
    starts = frame[frame.epoch == 0].drop_duplicates("panel").assign(run_id=None, clean_method=None, lr=np.nan)
    cleaned = frame[frame.epoch > 0]
    points = pd.concat([starts[columns], cleaned[columns]], ignore_index=True)
    order = {objective: i for i, objective in enumerate(objectives)}
    return points.sort_values(
        ["panel", "epoch", "clean_method", "lr", "run_id"], key=lambda c: c.map(order) if c.name == "panel" else c
    ).reset_index(drop=True)


def _lr_colors(lrs: Sequence[float]) -> dict[float, tuple]:
    ordered = sorted(set(lrs))
    colormap = colormaps["viridis"]
    return {lr: colormap(i / max(1, len(ordered) - 1) * 0.9) for i, lr in enumerate(ordered)}


def _epoch_alpha(epoch: int, last_epoch: int) -> float:
    """Later epochs are drawn more opaque, so a run's direction shows."""
    return 0.3 + 0.7 * epoch / max(1, last_epoch)


def plot_fig2(points: pd.DataFrame, objectives: Sequence[str], facet: str, criteria: Criteria = Criteria()) -> Figure:
    cleaned = points[points.epoch > 0]
    colors = _lr_colors(cleaned.lr)
    markers = dict(zip(sorted(set(cleaned.clean_method)), METHOD_MARKERS))
    last_epoch = int(cleaned.epoch.max())
    classes = points.n_classes.max() if "n_classes" in points and points.n_classes.notna().any() else None
    figure = Figure(figsize=(PANEL_INCHES * len(objectives), PANEL_INCHES + 0.6), layout="constrained")
    axes = figure.subplots(1, len(objectives), squeeze=False, sharey=True)[0]
    for ax, objective in zip(axes, objectives):
        panel = points[points.panel == objective]
        start = panel[panel.epoch == 0].iloc[0]
        success = ax.fill_between(
            [0, 100 * criteria.success_asr], 100 * SUCCESS_ACCURACY_FRACTION * start.top1, 100,
            color="tab:green", alpha=0.12, lw=0, label="successful cleaning",
        )
        for _, run in panel[panel.epoch > 0].groupby("run_id", sort=True):
            path = pd.concat([panel[panel.epoch == 0], run.sort_values("epoch")])
            ax.plot(100 * path.asr_top1, 100 * path.top1, color=colors[run.lr.iloc[0]], lw=0.8, alpha=0.45)
        for row in panel[panel.epoch > 0].itertuples():
            ax.scatter(
                100 * row.asr_top1, 100 * row.top1, color=colors[row.lr], marker=markers[row.clean_method],
                alpha=_epoch_alpha(row.epoch, last_epoch), s=36, edgecolors="none",
            )
        floor = ax.axvline(100 * criteria.attack_floor, color="gray", ls=":", lw=1, label="attack floor")
        if classes:
            chance = ax.axhline(100 / classes, color="gray", ls="-.", lw=1, label="chance top-1")
        poisoned_start = ax.scatter(100 * start.asr_top1, 100 * start.top1, marker="*", s=260, color="red",
                                    edgecolors="darkred", zorder=3, label="poisoned start")
        ax.set_title(objective_title(objective))
        ax.set_xlim(-3, 103)
        ax.set_xlabel("ASR@1 (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("clean zero-shot top-1 (%)")
    axes[0].set_ylim(0, 100)
    handles = [
        axes[0].scatter([], [], color=color, marker="o", label=f"lr {lr:g}") for lr, color in colors.items()
    ]
    if len(markers) > 1:
        handles += [axes[0].scatter([], [], color="gray", marker=m, label=method) for method, m in markers.items()]
    handles += [success, poisoned_start, floor] + ([chance] if classes else [])
    figure.legend(handles=handles, loc="outside lower center", ncols=_legend_columns(len(handles), objectives),
                  fontsize=8)
    title = figure.suptitle(
        f"Cleaning {facet}:\nclean accuracy vs attack success\n(a path per run and replicate, later epochs darker)"
    )
    return _fit_width(figure, title)


def _legend_columns(entries: int, objectives: Sequence[str]) -> int:
    """Two columns per panel, at most six, so that a one-panel legend is two columns."""
    return min(entries, 2 * len(objectives), 6)


def _fit_width(figure: Figure, title: Text) -> Figure:
    """Widens the figure to its title and legends where they are wider than its panels (a long
    facet over one panel), so that nothing is clipped."""
    figure.draw_without_rendering()
    legends = figure.legends + [ax.get_legend() for ax in figure.axes if ax.get_legend()]
    widest = max(artist.get_window_extent().width for artist in [title, *legends])
    margin = 0.2  # inches: constrained layout's padding on both sides, and some air
    figure.set_figwidth(max(figure.get_figwidth(), widest / figure.dpi + margin))
    return figure


def _two_rows(columns: int, ylabels: tuple[str, str], xlabel: str) -> tuple[Figure, np.ndarray]:
    """A figure of two rows of percentage panels (0-100), sharing x and each row's y, with an
    integer x axis."""
    figure = Figure(figsize=(PANEL_INCHES * columns, 2 * PANEL_INCHES * 0.75 + 0.6), layout="constrained")
    axes = figure.subplots(2, columns, squeeze=False, sharex=True, sharey="row")
    for ax in axes.flat:
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, label in zip(axes[:, 0], ylabels):
        ax.set_ylabel(label)
    return figure, axes


def plot_trajectories(trajectories: pd.DataFrame, objectives: Sequence[str], facet: str) -> Figure:
    """Top-1 (upper row) and ASR@1 (lower row) by cleaning epoch, a line per run (each replicate
    its own, one label per method and lr), a column per pretraining objective."""
    colors = _lr_colors(trajectories.lr)
    methods = sorted(set(trajectories.clean_method))
    styles = dict(zip(methods, ["-", "--", ":", "-."] * len(methods)))
    figure, axes = _two_rows(
        len(objectives), ("clean zero-shot top-1 (%)", "ASR@1 (%)"), "cleaning epoch (0: poisoned start)"
    )
    for column, objective in enumerate(objectives):
        runs = trajectories[trajectories.pretrain_objective == objective]
        labelled = set()
        for (method, lr, _), run in runs.groupby(["clean_method", "lr", "run_id"], sort=True):
            run = run.sort_values("epoch")
            label = (f"{method} lr {lr:g}" if len(methods) > 1 else f"lr {lr:g}") if (method, lr) not in labelled else None
            labelled.add((method, lr))
            for row, metric in enumerate(["top1", "asr_top1"]):
                axes[row, column].plot(run.epoch, 100 * run[metric], styles[method], marker="o", ms=3,
                                       color=colors[lr], label=label)
        axes[0, column].set_title(objective_title(objective))
    axes[0, 0].legend(fontsize=8)
    title = figure.suptitle(f"Cleaning {facet},\nepoch by epoch")
    return _fit_width(figure, title)


def plot_contamination(summary: pd.DataFrame, criteria: Criteria = Criteria()) -> Figure:
    """Verma et al.'s contamination ablation: against the poisons left in the cleaning set, the
    best top-1 at ASR@1 <= the success threshold (upper row; missing where no epoch got there)
    and the lowest ASR@1 reached (lower row), each a cell's mean over its replicates with its 95%
    interval (the summary_intervals table); a column per attack, a line per pretraining
    objective and method."""
    attacks = list(dict.fromkeys(summary.attack))
    figure, axes = _two_rows(
        len(attacks), (f"best top-1 at ASR@1 <= {criteria.success_asr:.0%} (%)", "lowest ASR@1 reached (%)"),
        "poisons in the cleaning set",
    )
    lines = summary.groupby(["pretrain_objective", "clean_method"], sort=False)
    methods = list(dict.fromkeys(summary.clean_method))
    styles = dict(zip(methods, [("-", "o"), ("--", "s"), (":", "D"), ("-.", "^")] * len(methods)))
    for column, attack in enumerate(attacks):
        for (objective, method), line in lines:
            line = line[line.attack == attack].sort_values("cleaning_poisons")
            label = f"{OBJECTIVE_TITLES.get(objective, objective)}, {method}"
            style, marker = styles[method]
            for row, metric in enumerate(["best_top1", "lowest_asr_top1"]):
                _with_error_bars(axes[row, column], line.cleaning_poisons, line, metric, ls=style, marker=marker, label=label)
        axes[1, column].axhline(100 * criteria.success_asr, color="gray", ls="--", lw=1)
        axes[0, column].set_title(attack)
    poisons = summary.cleaning_poisons
    axes[0, 0].set_xlim(poisons.min() - 1, poisons.max() + 1)  # one count: a point, not a hair-wide axis
    axes[0, 0].legend(fontsize=8)
    title = figure.suptitle("Poisons left in the cleaning set\n(the mean over replicates, with its 95% interval)")
    return _fit_width(figure, title)


def _with_error_bars(ax, x: pd.Series, frame: pd.DataFrame, metric: str, **style) -> None:
    """A point per row at its mean `metric` with its 95% interval (`metric`_low, _high), in %."""
    spread = np.abs(frame[[f"{metric}_low", f"{metric}_high"]].to_numpy().T - frame[metric].to_numpy())
    ax.errorbar(x, 100 * frame[metric], yerr=100 * spread, **({"marker": "o", "ls": "none"} | style), ms=4, capsize=2, lw=1)


def plot_stopping_rules(rules: pd.DataFrame, objectives: Sequence[str], criteria: Criteria = Criteria()) -> Figure:
    """A column per pretraining objective: each stopping rule's choice in every cleaning run of
    the study (the stopping_rule_intervals rows: a point per run without its seeds, its mean over
    the replicates with its 95% interval, coloured by attack), as the top-1 it gives up against
    the oracle's choice (above) and the ASR@1 it keeps (below)."""
    names = list(STOPPING_RULES)
    figure, axes = _two_rows(len(objectives), ("top-1 regret vs the oracle (points)", "ASR@1 of the choice (%)"),
                             "stopping rule")
    colors = dict(zip(sorted(rules.attack.unique()), colormaps["tab10"].colors))
    runs_per_rule = rules.groupby("rule").cumcount()  # side by side within a rule, in table order
    offset = (runs_per_rule + 0.5) / (runs_per_rule.groupby(rules.rule).transform("max") + 1) * 0.6 - 0.3
    rules = rules.assign(x=rules.rule.map(names.index) + offset)
    for column, objective in enumerate(objectives):
        for attack, runs in rules[rules.pretrain_objective == objective].groupby("attack"):
            _with_error_bars(axes[0, column], runs.x, runs, "top1_regret", color=colors[attack], label=attack)
            _with_error_bars(axes[1, column], runs.x, runs, "asr_top1", color=colors[attack])
        axes[0, column].axhline(0, color="gray", lw=0.8)
        axes[0, column].set_title(objective_title(objective))
        axes[1, column].axhline(100 * criteria.success_asr, color="gray", ls="--", lw=1)
        axes[1, column].set_xticks(range(len(names)), names, rotation=20)
    axes[0, 0].autoscale(axis="y")  # a rule may beat the oracle's top-1: regret is not a percentage
    axes[0, 0].legend(fontsize=8)
    title = figure.suptitle(
        f"Stopping rules: the checkpoint each keeps, a point per cleaning run\n(mean over replicates, 95% interval; "
        f"dashed: ASR@1 {criteria.success_asr:.0%})"
    )
    return _fit_width(figure, title)


def plot_pretraining_curve(curve: pd.DataFrame, objectives: Sequence[str]) -> Figure:
    """Top-1 (above) and ASR@1 (below) by pretraining epoch, a line per attack, a column per
    pretraining objective; each line's label gives its top-1 range over the last three epochs."""
    figure, axes = _two_rows(len(objectives), ("clean zero-shot top-1 (%)", "ASR@1 (%)"), "pretraining epoch")
    colors = dict(zip(sorted(curve.attack.unique()), colormaps["tab10"].colors))
    for column, objective in enumerate(objectives):
        for attack, run in curve[curve.pretrain_objective == objective].groupby("attack"):
            last_range = run.top1_range_last_three.iloc[-1]
            label = attack if pd.isna(last_range) else f"{attack} (last 3: {100 * last_range:.1f} pts)"
            for row, metric in enumerate(["top1", "asr_top1"]):
                axes[row, column].plot(run.epoch, 100 * run[metric], marker="o", ms=3, color=colors[attack], label=label)
        axes[0, column].set_title(objective_title(objective))
        axes[0, column].legend(fontsize=8)
    title = figure.suptitle("Pretraining of the poisoned models, epoch by epoch")
    return _fit_width(figure, title)


def write_pretraining_curve(database: Path, objectives: Sequence[str], figures: Sequence[Path], table: Path) -> pd.DataFrame:
    """The pretraining curve's figure (at every path of `figures`) and table, which is returned."""
    curve = query(database, "SELECT * FROM pretraining_curve").to_pandas()
    for path in figures:
        save_figure(plot_pretraining_curve(curve, objectives), path)
    write_csv(curve, table)
    return curve


def save_figure(figure: Figure, path: Path) -> None:
    """PDF or PNG by suffix, without a creation date, so the same data gives the same bytes."""
    suffix = Path(path).suffix.lstrip(".")
    metadata = {"CreationDate": None} if suffix == "pdf" else {}
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format=suffix, dpi=150, metadata=metadata)


def facet_title(facet: Mapping[str, Any]) -> str:
    return f"{facet['attack']}, {facet['cleaning_poisons']} poisons in the cleaning set"


INTERVAL_TABLES = ("summary_intervals", "stopping_rule_intervals", "comparisons")


def write_study_figures(
    database: Path, objectives: Sequence[str], facets: Sequence[Mapping[str, Any]], *,
    fig2: Sequence[Sequence[Path]], fig2_data: Path, trajectories: Sequence[Sequence[Path]],
    contamination: Sequence[Path], summary: Path, stopping: Sequence[Path] = (), stopping_table: Path | None = None,
    interval_tables: Mapping[str, Path] | None = None,
) -> pd.DataFrame:
    """From a study's results database: per facet (attack x poisons in the cleaning set) fig2
    and the trajectories figure (each at every path given for the facet), the points of every
    fig2, the contamination figure, the summary table, which is returned, the stopping rules'
    figure and table, and each of INTERVAL_TABLES at its path in `interval_tables`."""
    criteria = Criteria(**query(database, "SELECT * FROM criteria").to_pylist()[0])
    runs = query(database, "SELECT * FROM cleaning_trajectories").to_pandas()
    points = []
    for facet, fig2_paths, trajectory_paths in zip(facets, fig2, trajectories, strict=True):
        facet_runs = runs[(runs.attack == facet["attack"]) & (runs.cleaning_poisons == facet["cleaning_poisons"])]
        facet_points = fig2_points(facet_runs, objectives)
        for path in fig2_paths:
            save_figure(plot_fig2(facet_points, objectives, facet_title(facet), criteria), path)
        for path in trajectory_paths:
            save_figure(plot_trajectories(facet_runs, objectives, facet_title(facet)), path)
        points.append(facet_points.assign(**facet))
    with atomic_output(fig2_data) as temporary:
        pq.write_table(pa.Table.from_pandas(pd.concat(points, ignore_index=True), preserve_index=False), temporary)
    table = query(database, "SELECT * FROM study_summary").to_pandas()
    table["best_epoch"] = table["best_epoch"].astype("Int64")  # null where no epoch got there
    cells = query(database, "SELECT * FROM summary_intervals").to_pandas()
    for path in contamination:
        save_figure(plot_contamination(cells, criteria), path)
    write_csv(table, summary)
    rules = query(database, "SELECT * FROM stopping_rule_intervals").to_pandas()
    for path in stopping:
        save_figure(plot_stopping_rules(rules, objectives, criteria), path)
    if stopping_table:
        write_csv(query(database, "SELECT * FROM stopping_rules").to_pandas(), stopping_table)
    for name in INTERVAL_TABLES:
        if name in (interval_tables or {}):
            write_csv(query(database, f"SELECT * FROM {name}").to_pandas(), interval_tables[name])
    return table
