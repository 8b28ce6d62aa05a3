"""Old name of :mod:`gepalib.run` (kept while the notebooks move to ``from gepalib import run``)."""
from gepalib.run import *  # noqa: F401,F403
from gepalib.run import __all__  # noqa: F401
from gepalib.run.launch import _alive  # noqa: F401
