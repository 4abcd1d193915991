# Snakemake runs this once it has created the env, inside it, in its working directory (the
# repository root). Not a `pip:` entry of the env file: Snakemake creates the env from a copy of
# that file in .snakemake/conda/, where a relative path no longer points here. --no-deps: the env
# file pins what these rules import; pyproject.toml's list would add every other env's packages.
python -m pip install --no-deps --editable .
