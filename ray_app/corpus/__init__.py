"""Corpus sources: each adapter yields records in Prism's document schema (see ``schema.py``)."""
