"""The worker side of the queue: `WorkerRuntime` (registration, heartbeat, cancel notices),
`JobRunner` (claim, batch, infer, write once), `Reconciler` (recovery and retention) and the
hard time limit (`watchdog`). Celery's shell (`workers/`) drives it; it never imports Celery."""
