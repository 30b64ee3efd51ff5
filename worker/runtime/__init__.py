"""Running jobs: the local audit, the job state machine's task bodies, Celery, the embedded
runner and the sweeper."""
