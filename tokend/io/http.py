"""HTTP for the token client: requests whose timeout bounds the whole exchange.

requests' read timeout applies to each ``recv()``, so a server that trickles its answer a
byte at a time can hold a worker for ever. Under a :func:`deadline_session` the timeout is
a deadline instead: connecting, sending, the headers and the body together get
``timeout`` seconds. The deadline lives on each response's own stream: before every
``recv()`` the socket's timeout is set to what is left of it, and when nothing is left the
read raises :class:`DeadlineExceeded`. No timer, no thread, no shared state.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests
import urllib3

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class DeadlineExceeded(Exception):
    """The deadline passed before the response was complete.

    Not an :class:`OSError`, on purpose: urllib3 and requests wrap those in their own
    errors, and a read cut short can pass for the end of a response. This one passes
    through both unchanged, so the caller knows that the deadline ended the exchange.
    """

    def __init__(self, received: int) -> None:
        super().__init__(f"deadline passed after {received} bytes of the response")
        self.received = received  # how much of the response (status line on) had arrived


class _DeadlineReader(io.RawIOBase):
    """A response's raw stream that gives each ``recv()`` only what is left until
    ``deadline`` (``time.monotonic()``), so the deadline bounds the response as a whole."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        # A socket.SocketIO, as http.client's own makefile("rb") has: it keeps the socket
        # open while the response reads, after the connection hands the socket over.
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._timeout = sock.gettimeout()  # given back when the response is done
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int | None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(self.received)
        self._sock.settimeout(left)
        try:
            count = self._raw.readinto(buffer)
        except TimeoutError:  # socket.timeout, ssl's included
            raise DeadlineExceeded(self.received) from None
        self.received += count or 0
        return count

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(OSError):  # the connection may have closed it first
                self._sock.settimeout(self._timeout)
            self._raw.close()
        super().close()


class _DeadlineResponse(http.client.HTTPResponse):
    """An http.client response read through a :class:`_DeadlineReader`.

    Its deadline is the socket's timeout from now: urllib3 sets the socket's timeout to
    the request's read timeout just before it reads the response, and a
    ``urllib3.Timeout(total=…)`` makes that what is left of the total.
    """

    def __init__(
        self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        timeout = sock.gettimeout()
        if timeout is not None:
            plain, self.fp = self.fp, io.BufferedReader(_DeadlineReader(sock, time.monotonic() + timeout))
            plain.close()


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _DeadlineResponse


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _DeadlineResponse


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS: Mapping[str, type[urllib3.HTTPConnectionPool]] = {"http": _HTTPPool, "https": _HTTPSPool}


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """A transport adapter whose timeout, given as one number, bounds each request as a
    whole: connect, send, headers and body (a pair keeps requests' meaning for the connect
    timeout, and the read timeout bounds the whole response)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, urllib3.ProxyManager):  # a SOCKS proxy has its own connections
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        # urllib3 spends the total on connecting and sending, and gives the response what
        # is left of it as its read timeout, which _DeadlineResponse turns into a deadline.
        bounded: Any = urllib3.Timeout(total=timeout) if isinstance(timeout, int | float) else timeout
        return super().send(request, stream, bounded, verify, cert, proxies)


def deadline_session(session: requests.Session | None = None) -> requests.Session:
    """``session`` (or a new one) with a :class:`DeadlineAdapter` for http and https."""
    session = session or requests.Session()
    adapter = DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class NoNetrc(requests.auth.AuthBase):
    """Stops requests from replacing our Authorization header with ~/.netrc credentials."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r
