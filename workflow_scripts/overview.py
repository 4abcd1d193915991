from cleanclip_core.overview import write_overview
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    write_overview(
        snakemake.output[0],
        snakemake.params.title,
        snakemake.params.grid,
        {name: snakemake.input[name] for name in ("summary_intervals", "comparisons", "stopping_rule_intervals")},
        fig2=snakemake.input.fig2,
        trigger_grids=snakemake.input.trigger_grids,
        detection=snakemake.input.detection,
    )
