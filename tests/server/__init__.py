"""Tests of `tidebase serve` (the HTTP API) and of the SDK in server mode."""
