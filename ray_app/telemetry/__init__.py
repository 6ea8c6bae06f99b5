"""Operations telemetry: Prism's metrics (through Ray's metrics API) and per-ask tracing (OpenTelemetry)."""
