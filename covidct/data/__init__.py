"""Prepared data -> privacy units, Poisson sampling, and batches for the DP step."""
