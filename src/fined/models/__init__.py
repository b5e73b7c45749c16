"""CTR models: a shared embedding, layers, and one short file per model."""

from fined.models.ctr_model import CTRModel, build_model, model_config, model_names

__all__ = ["CTRModel", "build_model", "model_config", "model_names"]
