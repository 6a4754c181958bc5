"""Search methods; importing this package registers the built-in ones (and their config sections).

Each method lives in a room of its own (`adass/`, `bet/`, `ihas/`, `nasrec/`; `baselines.py` for the zero-cost
ones) and may import `supernet/`, `train/`, `tasks/`, `models/` and `planning/`, never another method.
"""

from torchrec_aes.search import (
    adass,  # noqa: F401
    baselines,  # noqa: F401
    bet,  # noqa: F401
    ihas,  # noqa: F401
    nasrec,  # noqa: F401
)
