# -*- test-case-name: tests.test_tls_server -*-
"""
The connections of a TLS listener (L{txgear._tls.ServerTLS.wrapEndpoint}):
Twisted's memory-BIO TLS over any stream transport, with a handshake
deadline and a log line for each failed handshake. Needs pyOpenSSL.
"""
from __future__ import annotations

from typing import Any, Optional

from zope.interface import implementer

from twisted.internet.interfaces import IStreamServerEndpoint, ITCPTransport
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

from txgear._log import logger
from txgear._peerlog import PeerLog
from txgear._tls import DEFAULT_HANDSHAKE_DEADLINE, ServerTLS, describeVerifyError


class ServerTLSProtocol(TLSMemoryBIOProtocol):
    """
    One TLS connection of a server: closed if its handshake is not over by
    the deadline; a failed handshake is logged (rate-limited per listener).

    Small writes are not gathered here (Twisted's C{BufferingTLSTransport}
    would): the server's output already leaves once per reactor turn.
    """

    factory: "ServerTLSFactory"
    _deadlineCall: Any = None
    _verifyError: Optional[str] = None
    _applicationProducer: Any = None

    def makeConnection(self, transport: Any) -> None:
        factory = self.factory
        self._deadlineCall = factory.clock.callLater(factory.handshakeDeadline,
                                                     self._handshakeDeadlinePassed)
        TLSMemoryBIOProtocol.makeConnection(self, transport)

    def handshakeFinished(self) -> bool:
        """Is the TLS handshake over (the peer's Finished message received)?"""
        connection = self.getHandle()
        return connection is not None and connection.get_peer_finished() is not None

    def noteVerifyError(self, certificate: Any, error: int, depth: int) -> None:
        """OpenSSL refused the peer's certificate (or one of its chain)."""
        if self._verifyError is None:
            try:
                subject = certificate.get_subject().CN
            except Exception:
                subject = None
            self._verifyError = (f"its certificate{f' (CN={subject})' if subject else ''} "
                                 f"was refused: {describeVerifyError(error)}")

    # Twisted declares every TLSMemoryBIOProtocol an ITCPTransport, whatever
    # it wraps: over a UNIX socket these would fail, so they do nothing there.
    def setTcpNoDelay(self, enabled: bool) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(enabled)

    def getTcpNoDelay(self) -> bool:
        return ITCPTransport.providedBy(self.transport) and self.transport.getTcpNoDelay()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(enabled)

    def getTcpKeepAlive(self) -> bool:
        return ITCPTransport.providedBy(self.transport) and self.transport.getTcpKeepAlive()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        TLSMemoryBIOProtocol.registerProducer(self, producer, streaming)
        self._applicationProducer = producer

    def unregisterProducer(self) -> None:
        self._applicationProducer = None
        TLSMemoryBIOProtocol.unregisterProducer(self)

    def loseConnection(self) -> None:
        """
        Close once everything written is sent. Twisted's TLS waits for a
        registered producer to unregister first: one that can tell when it
        has handed over all its output (C{transportClosing}) is told.
        """
        TLSMemoryBIOProtocol.loseConnection(self)
        producer = self._applicationProducer
        if producer is not None and self.disconnecting:
            closing = getattr(producer, "transportClosing", None)
            if closing is not None:
                closing()

    def _handshakeDeadlinePassed(self) -> None:
        self._deadlineCall = None
        if self.disconnecting or self.handshakeFinished():
            return
        self.factory.peerLog.warn(self.factory, "tls-deadline",
                                  "Closing TLS connection from {peer}: no handshake within "
                                  "{deadline} seconds", peer=_peerText(self),
                                  deadline=self.factory.handshakeDeadline)
        self.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        call, self._deadlineCall = self._deadlineCall, None
        if call is not None and call.active():
            call.cancel()
            if not self.handshakeFinished():
                self._logFailedHandshake()
        TLSMemoryBIOProtocol.connectionLost(self, reason)

    def _logFailedHandshake(self) -> None:
        connection = self.getHandle()
        if connection is None:
            return
        peerLog = self.factory.peerLog
        if self._verifyError is not None:
            why = self._verifyError
        elif connection.client_random() is not None:
            why = ("no client certificate, or no TLS version or cipher in common (TLS 1.2 "
                   "or 1.3 is needed)" if self.factory.requiresClientCertificate
                   else "no TLS version or cipher in common (TLS 1.2 or 1.3 is needed)")
        elif connection.get_state_string() == b"error":
            why = "it does not speak TLS (a plain Gearman client on the TLS port?)"
        else:
            # Connected and left without a word: a port probe, not worth a warning.
            peerLog.info(self.factory, "tls-silent", "TLS connection from {peer} closed "
                         "before any handshake", peer=_peerText(self))
            return
        peerLog.warn(self.factory, "tls-handshake", "TLS handshake with {peer} failed: {why}",
                     peer=_peerText(self), why=why)


def _peerText(protocol: Any) -> str:
    try:
        peer = protocol.getPeer()
    except Exception:
        return "?"
    port = getattr(peer, "port", None)
    return f"{peer.host}:{port}" if port is not None else str(peer)


class ServerTLSFactory(TLSMemoryBIOFactory):
    """
    Wraps a server factory's protocols in TLS with a L{ServerTLS}.

    @ivar clock: an C{IReactorTime}, for the handshake deadline.
    @ivar handshakeDeadline: seconds a peer has to finish its handshake.
    """

    protocol = ServerTLSProtocol
    _log = logger()

    def __init__(self, tls: ServerTLS, wrappedFactory: Any, clock: Any,
                 handshakeDeadline: float = DEFAULT_HANDSHAKE_DEADLINE) -> None:
        TLSMemoryBIOFactory.__init__(self, tls, False, wrappedFactory, clock)
        self._tls = tls
        self.clock = clock
        self.handshakeDeadline = handshakeDeadline
        self.peerLog = PeerLog(self._log, clock)

    @property
    def requiresClientCertificate(self) -> bool:
        """Does this listener require a client certificate (right now)?"""
        tls = self._tls
        return tls is not None and tls.requiresClientCertificate


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    A server endpoint whose connections carry TLS (a L{ServerTLS}) on top of
    another endpoint's.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, tls: ServerTLS, clock: Any) -> None:
        self._endpoint = endpoint
        self._tls = tls
        self._clock = clock

    def listen(self, protocolFactory: Any) -> Any:
        """Listen on the wrapped endpoint; fires with its C{IListeningPort}."""
        return self._endpoint.listen(self._tls.wrapFactory(protocolFactory, self._clock))


__all__ = ["ServerTLSFactory", "ServerTLSProtocol", "TLSServerEndpoint"]
