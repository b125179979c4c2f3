"""Speed and memory benchmarks of the opt-DDAP engine (see bench/README.md): one module per part over a
shared harness (bench/harness.py)."""
