"""Simulators: local carrier peers speaking the real protocols on loopback (dev, tests, benchmarks)."""  # noqa: E501
