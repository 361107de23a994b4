"""Performance benchmarks of the toolkit (``python -m benchmarks`` / ``clips bench``); see
docs/performance.md and benchmarks/RESULTS.md."""
