"""When the next checkpoint is due, by the wall clock, so that restarts do not postpone it.

A timer that starts with the process never fires in a crash loop: twelve runs of 30 s each
with a 60 s interval once produced no checkpoint at all. The interval is therefore measured from
the newest checkpoint's own timestamp (read back from ``checkpoint.latest`` on start), or from
the last failed attempt so that a broken audit key is retried once per interval rather than
after every group. A log that has never been checkpointed counts from when it was opened; the
writer also checkpoints right after start-up whenever records lie past the newest checkpoint.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointClock:
    """The wall-clock times (Unix seconds) that decide the next checkpoint."""

    interval: float
    opened: float
    last_checkpoint: float | None = None
    last_failure: float | None = None

    def seconds_until_due(self, now: float) -> float:
        """Seconds from ``now`` until a checkpoint is due (zero or less: due now).

        If the clock went back past the reference time, the checkpoint is due at once rather
        than after the clock has caught up again; a failed attempt then sets a new reference.
        """
        if self.last_failure is not None:
            since = self.last_failure
        elif self.last_checkpoint is not None:
            since = self.last_checkpoint
        else:
            since = self.opened
        elapsed = now - since
        if elapsed < 0:
            return 0.0
        return self.interval - elapsed
