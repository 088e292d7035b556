"""Developer tools kept outside the runtime path: the benchmark (``gnr650-bench``)."""
