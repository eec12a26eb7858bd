"""The one random-number source of dltrain (fillers, dropout, data order).

``set_random_seed`` reseeds it, as Caffe::set_random_seed does, so a run
with the same seed on the same machine draws the same numbers.
"""
import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed):
    global _rng
    _rng = np.random.default_rng(None if seed is None or seed < 0 else int(seed))


def get_rng():
    return _rng
