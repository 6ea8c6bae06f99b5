"""The ask pipeline: one service over four stages (vision, retrieve, generate, audit)."""
