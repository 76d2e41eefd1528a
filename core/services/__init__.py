"""Commands shared by every API (native and the dialects): plain Python over core.data, no Flask."""
