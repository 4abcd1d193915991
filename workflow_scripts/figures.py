import logging

from cleanclip_core.plots.cleaning import write_cleaning_figures
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    output = snakemake.output
    best = write_cleaning_figures(
        snakemake.input[0],
        snakemake.params.pretrain_objectives,
        fig2=[output.fig2_pdf, output.fig2_png],
        fig2_data=output.fig2_data,
        trajectories=[output.trajectories_pdf, output.trajectories_png],
        best_accuracy=output.best_accuracy,
    )
    logging.info(f"best clean top-1 at ASR@1 <= 5%:\n{best.to_string(index=False)}")
