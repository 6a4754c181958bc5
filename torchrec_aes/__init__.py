"""torchrec_aes: automatic embedding-size and architecture search on TorchRec."""
