"""``python -m ray_app.ingest DIR [...]``: the Ray Data ingest job (what ``ray job submit`` runs)."""

from ray_app.ingest.job import main

main()
