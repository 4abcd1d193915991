"""Backdoor poisoning and cleaning of CLIP models."""
