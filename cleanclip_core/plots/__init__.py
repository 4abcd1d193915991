"""Figures: what a trigger does to images, and what cleaning does to accuracy and ASR."""
