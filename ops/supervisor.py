"""Restarting a local cluster's children that exit: exponential backoff (1 s, doubling to 30 s; back to 1 s once
a child ran for a minute), and a child that crash-loops (5 restarts in a row, each exiting within a minute of its
start) is left down, with its log's last lines in the launcher's log."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ops.children import Child

logger = logging.getLogger("shardline.up")
BACKOFF_FIRST_S, BACKOFF_MAX_S, BACKOFF_RESET_S = 1.0, 30.0, 60.0  # restart delays of a crashed child
MAX_RESTARTS = 5  # restarts in a row, each exiting within BACKOFF_RESET_S of its start, before a child is left down


@dataclass(frozen=True)
class RestartPolicy:
    first_s: float = BACKOFF_FIRST_S  # delay before the first restart, doubling on each one in a row
    max_s: float = BACKOFF_MAX_S  # the longest delay
    reset_s: float = BACKOFF_RESET_S  # a child that ran this long was healthy: its count of restarts starts over
    max_restarts: int = MAX_RESTARTS  # a child exiting again after this many restarts in a row is left down


def restart_exited(children: list[Child], policy: RestartPolicy, now: float) -> bool:
    """One supervision round at ``now``; True when a child's state changed (children.json is then rewritten)."""
    changed = False
    for child in children:
        if child.alive or child.state == "failed":
            continue
        if child.restart_at is None:
            schedule_restart(child, policy, now)
            changed = True
        elif now >= child.restart_at:
            child.restarts += 1
            child.restart_at = None
            logger.warning("restarting %s (restart #%d)", child.name, child.restarts)
            child.start(now)
            changed = True
    return changed


def schedule_restart(child: Child, policy: RestartPolicy, now: float) -> None:
    """A child that just exited: due again after its backoff, or left down when it crash-loops."""
    if now - child.started_at > policy.reset_s:
        child.restarts = 0
    code = child.process.returncode if child.process else "?"
    child.flush_log(1.0)
    if child.restarts >= policy.max_restarts:
        child.state = "failed"
        logger.error("%s exited (code %s) after %d restarts in a row, each within %.0f s of its start: "
                     "it is crash-looping, so it is left down (fix the cause, then start shardline up "
                     "again). Last lines of %s:\n%s", child.name, code, child.restarts, policy.reset_s,
                     child.log_path, child.log_tail())
        return
    delay = min(policy.max_s, policy.first_s * 2 ** child.restarts)
    child.restart_at = now + delay
    child.state = "restarting"
    logger.error("%s exited (code %s); restarting it in %.0f s (restart #%d of at most %d in a row). "
                 "Last lines of %s:\n%s", child.name, code, delay, child.restarts + 1,
                 policy.max_restarts, child.log_path, child.log_tail())
