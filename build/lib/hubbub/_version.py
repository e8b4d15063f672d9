"""The one version string: the package, `python -m app --version` and /healthz all read it."""

__version__ = "0.2.0"
