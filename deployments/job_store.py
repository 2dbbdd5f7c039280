"""The `JobStore` Serve deployment: the cluster's job records (stages/job_store.py) and their watchdog."""

from __future__ import annotations

import logging
import threading
import time

from ray import serve

from contract.messages import StageProgress
from contract.settings import Settings
from contract.storage import OutputStore
from deployments.app_state import app_deleting
from stages.job_store import JobStore

logger = logging.getLogger("ray.serve")


@serve.deployment(name="JobStore")
class JobStoreDeployment(JobStore):
    """Exactly one replica: it holds the records in memory (and writes them behind to the
    output store, from which a restarted replica reloads them)."""

    def __init__(self, settings: Settings):
        serving = settings.serving
        super().__init__(
            OutputStore(settings.output_uri),
            serving.stage_timeout_seconds,
            serving.runner_lost_seconds,
            serving.record_write_delay_seconds,
        )
        threading.Thread(target=self._watch, name="job-watchdog", daemon=True).start()

    # A stage's words, answered on the replica's event loop: they only touch memory, and a sync
    # method would cost each call a hop to Serve's thread pool and back. (A new or ended job's call
    # waits for its record to be written: those stay on the thread pool.)
    async def report(self, progress: StageProgress) -> bool:
        return JobStore.report(self, progress)

    async def heartbeat(self, runner: str) -> None:
        JobStore.heartbeat(self, runner)

    def __del__(self):
        """Serve stops the replica (redeploy, shutdown): what is still to be written goes first.
        When the whole app goes, its jobs cannot finish: each is recorded as interrupted."""
        if app_deleting():
            for job_id in self.interrupt_active("the app was stopped while this job ran; submit it again"):
                logger.warning("job %s interrupted: the app is being deleted", job_id)
        if not self.flush(timeout=10):
            logger.warning("job store: stopped with job records not yet written to %s", self.store.uri)

    def _watch(self) -> None:
        while True:
            time.sleep(1.0)
            try:
                for job_id in self.check():
                    logger.warning("job %s failed by the watchdog: %s", job_id, self.get(job_id).error.message)
                with self._lock:  # a gauge not set since the last export drops out of it: set it every second
                    self._publish()
            except Exception:  # the watchdog must outlive any one bad record
                logger.exception("job watchdog")
