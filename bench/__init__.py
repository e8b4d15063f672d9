"""hubbub's benchmark: a light load generator, a naive baseline, and the scenarios of issue 6.

Run ``python -m bench`` (``make bench``) or ``python -m bench --quick`` (``make bench-quick``).
"""
