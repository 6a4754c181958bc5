"""Search methods. Each lives in a room of its own (`adass/`, `bet/`, `ihas/`, `nasrec/`; `baselines.py` for
the zero-cost ones) and may import `supernet/`, `train/`, `tasks/`, `models/` and `planning/`, never another
method. Importing this package registers nothing: `search.base.get_method` imports a built-in method's
module by name (`search.base.BUILTIN_METHODS`) when it is first asked for, and that module registers the
method (`search.base.register`) and its config section (`config.register_section`).
"""
