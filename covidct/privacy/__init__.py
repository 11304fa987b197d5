"""Differential privacy: accounting, the DP-SGD mechanism, reports, ledger and audit."""
