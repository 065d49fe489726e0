"""Benchmarks that run the relay's real processes and measure what the relay costs."""
