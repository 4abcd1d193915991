# Helpers shared by the rules: path builders and input functions.

DATASET = config["dataset"]["name"]


wildcard_constraints:
    dataset=DATASET,
    attack="|".join(config["attacks"]),


def url_list(wildcards):
    """The URL list to download: the configured TSV, else the generated corpus's."""
    return config["dataset"]["url_list"] or f"results/{wildcards.dataset}/corpus/urls.tsv"


def attack_config(wildcards):
    return config["attacks"][wildcards.attack]
