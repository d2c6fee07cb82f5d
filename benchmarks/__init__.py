"""Benchmarks: ours and diffusers side by side in one process. Run as `python -m benchmarks.<name>`."""
