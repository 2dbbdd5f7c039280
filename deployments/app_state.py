"""Whether this replica stops because its whole app is being deleted (`serve.delete`, Ctrl-C on
`t2v serve`) rather than alone (a scale-down, a redeploy). Alone, an ingress finishes its jobs
first; with the whole app, the job store and the stages go too, so the jobs end at once instead,
each recorded as interrupted."""

from __future__ import annotations

import logging

from ray import serve

logger = logging.getLogger(__name__)


def app_deleting() -> bool:
    """Blocking (a call to Serve's controller): from async code, run it on a thread."""
    try:
        app = serve.get_replica_context().app_name
        status = serve.status().applications.get(app)
    except Exception as error:  # no controller to ask: treat it as the replica stopping alone
        logger.warning("cannot tell whether the app is being deleted: %r", error)
        return False
    return status is None or str(getattr(status.status, "value", status.status)) == "DELETING"
