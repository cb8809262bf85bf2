"""Benchmarks: ``python -m bench`` runs every registered benchmark; each prints JSON lines.

Absolute figures on a shared 2-core machine swing by +-30 % from run to run; every benchmark
therefore measures its subject next to a baseline in the same run (alternating short bursts)
and reports the median of the per-round ratios, which holds within a few percent.
"""
