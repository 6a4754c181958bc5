"""Data: schemas, readers, preprocessing, the synthetic generator, and batching into TorchRec `Batch`es.

`torchrec_aes.data.load.load_data` is the one entry point for CTR data; `interactions.load_interactions`
for CF data. This package's `__init__` imports nothing, so `torchrec_aes.data.schema` stays cheap to import.
"""
