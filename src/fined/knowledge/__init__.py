"""The FINED knowledge base: extractor, encoder, regularizers, and the adaptor that feeds
each instance the knowledge it needs inside any base CTR model."""
