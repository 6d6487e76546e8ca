"""The namespace lab shared by tests, benchmarks and `netguard demo`. The daemon never imports it."""
