from cleanclip_core.data.download import DownloadSettings, download_shards
from cleanclip_core.reporting import reported_step

# img2dataset's worker processes (spawned) import this file again: only the parent runs it.
if __name__ == "__main__":
    with reported_step(snakemake.log[0]):
        download_shards(
            snakemake.input.url_list,
            snakemake.output.shards,
            snakemake.output.stats,
            snakemake.output.shard_listing,
            DownloadSettings(
                **snakemake.params.download,
                threads_per_process=snakemake.resources.download_threads,
                timeout_s=snakemake.resources.download_timeout_s,
                retries=snakemake.resources.download_retries,
            ),
            processes=snakemake.threads,
            img2dataset_log=snakemake.log[0],
        )
