"""The world: kernel sources, the download cache, the catalog loader, the guest runtime, the
SQLite store, git and the report writers. Adapters may use core, never app or cli."""
