"""Socket and fd helpers every transport shares: closing received fds, bounded waits."""

from __future__ import annotations

import logging
import os
import select
import socket
import time

__all__ = ["close_fds", "wait_ready"]

log = logging.getLogger("cosim.bridge")


def close_fds(fds: tuple[int, ...] | list[int]) -> None:
    """Close fds a peer sent us; one already closed or never valid leaks nothing."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError as exc:
            log.debug("closing received fd %d: %s", fd, exc)


def wait_ready(sock: socket.socket, events: int, deadline: float, what: str) -> None:
    """Wait until `sock` has `events`, or raise TimeoutError naming `what`.

    Polls even when the deadline has passed: bytes already queued are taken, so a reader
    descheduled past its deadline (a loaded host) never rejects a complete message."""
    poller = select.poll()
    poller.register(sock, events)
    if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
        raise TimeoutError(f"timed out {what}")
