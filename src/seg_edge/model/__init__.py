"""Torch side: network presets, checkpoints and training (needs the 'export' extra)."""
