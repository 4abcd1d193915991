import logging

from cleanclip_core.plots.cleaning import INTERVAL_TABLES, write_study_figures
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    output = snakemake.output
    summary = write_study_figures(
        snakemake.input[0],
        snakemake.params.objectives,
        snakemake.params.facets,
        fig2=list(zip(output.fig2, output.fig2_png)),
        fig2_data=output.fig2_data,
        trajectories=list(zip(output.trajectories, output.trajectories_png)),
        contamination=[output.contamination, output.contamination_png],
        summary=output.summary,
        stopping=[output.stopping, output.stopping_png],
        stopping_table=output.stopping_table,
        interval_tables={name: output[name] for name in INTERVAL_TABLES},
    )
    logging.info(f"study summary:\n{summary.to_string(index=False)}")
