"""``incremental``: warm start, train on the current period only (the forgetting baseline)."""

from fined.protocol.strategies import Strategy, register_strategy

register_strategy("incremental")(Strategy)
