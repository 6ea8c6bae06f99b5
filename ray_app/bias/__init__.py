"""The bias audit's building blocks (below the ask pipeline): biography annotation, fairness of exposure and its
re-ranking, and per-group answer metrics. ``ray_app.rai`` composes them into the RAI report."""
