"""trustmesh: the zero-trust security platform for Python microservices."""

__all__ = ["__version__"]

__version__ = "0.1.0"
