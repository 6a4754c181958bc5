"""Search methods; importing this package registers the built-in ones."""

from torchrec_aes.search import baselines  # noqa: F401
