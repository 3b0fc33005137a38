"""Faust tables of per-session state, and the ``redis://`` table store they use by default."""

from faust.stores import STORES

# registered before any table is created (tables/sessions.py creates its tables at import); faust imports
# the store module only when a table first needs it
STORES["redis"] = STORES["rediss"] = "tables.redis_store:RedisStore"
