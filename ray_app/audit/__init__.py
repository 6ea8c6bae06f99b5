"""Per-answer audit: grounding and injection checks, and the tamper-evident audit log."""
