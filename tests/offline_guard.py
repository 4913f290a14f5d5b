"""Refuse any socket connection to a non-loopback address, and log the attempt.

Installed in the pytest process by conftest.py and in every notebook kernel through an IPython
startup file, so a cell that reaches for the network fails even if a library swallows the error:
conftest fails the test when the log at $FROM_ZERO_NETWORK_LOG grows.
"""
from __future__ import annotations

import ipaddress
import os
import socket

LOG_ENV = "FROM_ZERO_NETWORK_LOG"


class NetworkBlocked(RuntimeError):
    """Not an OSError on purpose: libraries that quietly fall back on connection errors see it."""


def is_allowed(address) -> bool:
    """Unix sockets and loopback addresses (127.0.0.0/8, ::1, localhost) only."""
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = str(address[0]).split("%")[0]
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # a host name that is not localhost
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _refuse(address) -> None:
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{address!r}\n")
    raise NetworkBlocked(f"network access to {address!r} blocked: the course must run offline "
                         f"(data and models come from data/ and installed packages)")


def _guard(original):
    def guarded(self, address, *args, **kwargs):
        if not is_allowed(address):
            _refuse(address)
        return original(self, address, *args, **kwargs)
    guarded.__wrapped__ = original
    return guarded


def install() -> None:
    """Patch socket.socket.connect and connect_ex (idempotent)."""
    for name in ("connect", "connect_ex"):
        current = getattr(socket.socket, name)
        if not hasattr(current, "__wrapped__"):
            setattr(socket.socket, name, _guard(current))
