from pathlib import Path

from cleanclip_core.corpus import generate_corpus
from cleanclip_core.reporting import reported_step

with reported_step(snakemake.log[0]):
    generate_corpus(Path(snakemake.output.url_list).parent, **snakemake.params.corpus)
