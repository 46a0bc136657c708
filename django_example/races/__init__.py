"""The demo app: views that show each original bug when the cache backend
has it (see ``races.pairs`` for the backends compared)."""
