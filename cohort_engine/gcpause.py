"""Pausing Python's cyclic garbage collector while building a large acyclic result (a parsed broker answer)."""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    """No collections inside: a million parsed rows otherwise trigger full collections over the whole heap.

    The objects made inside (lists, tuples, strings of one answer) hold no cycles, so nothing a
    collection could free is missed; the collector runs again as usual afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
