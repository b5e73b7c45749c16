"""DIN (Zhou et al., KDD 2018): for each behaviour sequence, a local activation unit weighs
every past item by its relevance to the target item, and the weighted sum (the user's interest
*in this target*) joins the field vectors as an extra field; an MLP (Dice by default in the
paper, configurable here) gives the logit.

Which sequences are behaviours, and which target id feature each one is matched against, is
set by ``behaviour`` (``{hist_items: item_id}``) or, when empty, inferred: every user-side
sequence whose vocabulary is that of an item-side id feature (``hist_items`` -> ``item_id``).
Item-side sequences (e.g. an item's genre list) describe the target itself and stay pooled.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn

from fined.data.batch import Batch
from fined.data.feature_map import FeatureMap
from fined.models.ctr_model import CTRModel, ModelConfig, register_model
from fined.models.interaction import TargetAttention
from fined.models.layers import check_activation


class DINConfig(ModelConfig):
    # ``activation`` (the MLP's) stays relu by default; dice is the paper's choice.
    behaviour: dict[str, str] = Field(default_factory=dict)  # history -> target; {}: inferred
    attention_mlp: list[int] = Field(default_factory=lambda: [64], min_length=1)
    attention_activation: str = "dice"  # "dice" or any MLP activation
    attention_softmax: bool = False  # the paper keeps raw weights (interest intensity)

    _check_attention_activation = field_validator("attention_activation")(check_activation)


def behaviour_pairs(fmap: FeatureMap, behaviour: dict[str, str]) -> list[tuple[str, int]]:
    """``(sequence name, column of its target in the id fields)`` per behaviour sequence."""
    column = {f.name: j for j, f in enumerate(fmap.id_features)}
    seqs = {f.name: f for f in fmap.sequence_features}
    if not behaviour:
        item_vocab: dict[str, str] = {}
        for f in fmap.id_features:
            if f.source == "item":
                item_vocab.setdefault(f.vocab, f.name)
        behaviour = {
            s.name: item_vocab[s.vocab]
            for s in seqs.values()
            if s.source != "item" and s.vocab in item_vocab
        }
        if not behaviour:
            raise ValueError(
                "DIN needs a behaviour sequence sharing its vocabulary with an item id feature "
                f"(sequences here: {sorted(seqs) or 'none'}); name the pairs in `behaviour`, "
                "e.g. {hist_items: item_id}"
            )
    for seq, target in behaviour.items():
        if seq not in seqs:
            raise ValueError(f"behaviour: {seq!r} is not a sequence feature of this dataset")
        if target not in column:
            raise ValueError(f"behaviour.{seq}: {target!r} is not an id feature of this dataset")
        if fmap.feature(target).vocab != seqs[seq].vocab:
            raise ValueError(
                f"behaviour.{seq}: {target!r} does not share its vocabulary (attention compares "
                "a history and its target in one embedding space)"
            )
    return [(seq, column[target]) for seq, target in behaviour.items()]


@register_model("din")
class DIN(CTRModel):
    config_class = DINConfig
    config: DINConfig
    targets: torch.Tensor  # a buffer: the id column of each behaviour's target

    def __init__(
        self, feature_map: FeatureMap, config: DINConfig, knowledge_tokens: int = 0
    ) -> None:
        pairs = behaviour_pairs(feature_map, config.behaviour)
        # These sequences stay unpooled for the attention below.
        raw = tuple(seq for seq, _ in pairs)
        super().__init__(feature_map, config, knowledge_tokens, raw_sequences=raw)
        c, d = config, config.embedding_dim
        self.register_buffer("targets", torch.tensor([j for _, j in pairs]), persistent=False)
        self.attention = nn.ModuleList(
            TargetAttention(d, c.attention_mlp, c.attention_activation, c.attention_softmax)
            for _ in pairs
        )
        self.mlp = self.config_mlp((self.num_fields + len(pairs)) * d)

    def interact(self, fields: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``[B, F, d] -> [B]``; the histories come from ``batch.sequences``."""
        queries = fields.index_select(1, self.targets)  # [B, S, d]: the target id vectors
        interests = [
            unit(queries[:, i], *self.embedding.lookup_sequence(batch, name))  # [B, d]
            for i, (name, unit) in enumerate(zip(self.raw_sequences, self.attention, strict=True))
        ]
        # Fields last: appended knowledge fields then only widen the tail of the MLP input, so
        # a model without them can be copied into one with them (a warm start).
        return self.mlp(torch.cat([*interests, fields.flatten(1)], 1)).squeeze(1)
