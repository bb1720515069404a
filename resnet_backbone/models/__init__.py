"""The network: norm layers, the fast path, blocks, stages and the backbone."""
