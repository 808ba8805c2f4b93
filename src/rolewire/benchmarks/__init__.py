"""Benchmark runners behind ``rolewire bench``. Each reports figures as
ratios against baselines measured in the same run."""
