"""Microbenchmarks of contnet: see bench/README.md."""
