"""Search methods; importing this package registers the built-in ones."""

from torchrec_aes.search import (
    adass,  # noqa: F401
    baselines,  # noqa: F401
    bet,  # noqa: F401
)
