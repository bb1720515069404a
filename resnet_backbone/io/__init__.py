"""Files on disk: atomic writes, checkpoints, and weights from other ecosystems."""
