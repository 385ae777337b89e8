"""Strategies as compositions of parts: filter and weight pruning, ratio policies, and the steps they plan."""
