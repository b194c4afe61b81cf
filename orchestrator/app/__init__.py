"""Use cases wired from core and adapters: the resuming prober (replay, store, real probe) and
the kernel-line listing. The CLI calls these; they never print."""
