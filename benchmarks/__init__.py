"""Benchmarks of magnet-exporter against `json.loads` and against a hand-written exporter."""
