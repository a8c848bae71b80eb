"""Shardline benchmark: the same workload against Shardline, monolithic transformers and llama.cpp.

Run with ``make bench`` or ``python -m bench --help``. Results go to ``bench/results/``.
"""
