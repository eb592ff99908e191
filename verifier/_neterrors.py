"""What went wrong on the network, in words: ``cannot connect to 127.0.0.1:8500: Connection
refused``, not aiohttp's ``Cannot connect to host 127.0.0.1:8500 ssl:default [...]`` (which
names TLS even for plain HTTP)."""

from __future__ import annotations

import os
import socket
import sys

__all__ = ["describe_error"]


def _reason(error: OSError | None) -> str:
    if error is None:
        return "connection failed"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name ({error.strerror or error})"
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


def describe_error(e: BaseException) -> str:
    # aiohttp's errors can only come from aiohttp once it is loaded: never import it here
    # (`import verifier` stays free of it, docs/verifier.md).
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is None:
        return f"{type(e).__name__}: {e}".rstrip(": ")
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return (f"the TLS certificate of {e.host}:{e.port} is not trusted: "
                f"{e.certificate_error}")
    if isinstance(e, aiohttp.ClientConnectorError):
        key = getattr(e, "_conn_key", None)
        tls = " over TLS" if key is not None and getattr(key, "is_ssl", False) else ""
        return f"cannot connect to {e.host}:{e.port}{tls}: {_reason(e.os_error)}"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before answering"
    return f"{type(e).__name__}: {e}".rstrip(": ")
