"""Machine-driven design exploration: search spaces around a prototype, and the search over them."""

from attendnets.search.space import SearchSpace, SpaceError, default_space

__all__ = ["SearchSpace", "SpaceError", "default_space"]
