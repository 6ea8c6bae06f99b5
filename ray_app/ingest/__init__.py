"""The Ray Data ingest: chunk, embed text and images, COPY into pgvector."""
