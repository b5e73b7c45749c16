"""fined: CTR prediction under drift with a parametric knowledge base of the past."""

__version__ = "0.1.0"
