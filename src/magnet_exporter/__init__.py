"""Prometheus exporter for Magnet's List Sessions API."""

__version__ = "0.1.0"
