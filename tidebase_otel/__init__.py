"""OpenTelemetry for Tidebase: spans for runs and steps, Agents SDK traces, usage metrics."""
