"""Embedding modules beyond TorchRec's own: the elastic (supernet) EBC."""

from torchrec_aes.embedding.elastic import ElasticEmbeddingBagCollection

__all__ = ["ElasticEmbeddingBagCollection"]
