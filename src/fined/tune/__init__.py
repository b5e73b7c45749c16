"""``fined tune``: a search over any ``--set`` keys that chooses on validation only.

A search space (``space.py``) is sampled by grid, random or TPE (Optuna's samplers, seeded
per trial so that a resumed search asks what an uninterrupted one would); each trial is a
training job or a protocol run in its own directory (``objectives.py``); ``search.py`` keeps
the trials (resumable after a kill, several at once where cores allow) and writes the table
and the best settings.
"""
