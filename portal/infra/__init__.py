"""Local infrastructure: the pinned Go toolchain and kwok development clusters."""
