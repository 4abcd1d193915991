"""Data stages: download into webdataset shards, manifests, and the training/evaluation loaders."""
