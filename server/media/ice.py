"""aioice, adjusted: WebRTC kept on the loopback interface (tests, single-machine setups), and consent checks that
end with their connection.

aioice gathers host candidates on every interface except loopback, so even a browser on the same machine talks
to the machine's LAN address. With loopback-only ICE, this process offers 127.0.0.1 alone and ignores remote
candidates elsewhere: no packet is addressed outside 127.0.0.0/8.
"""

from __future__ import annotations

import ipaddress

import aioice.ice

_original_add_remote_candidate = aioice.ice.Connection.add_remote_candidate
_original_request_received = aioice.ice.Connection.request_received


def restrict_ice_to_loopback() -> None:
    """Process-wide: gather only 127.0.0.1, drop remote candidates elsewhere, and leave checks from elsewhere
    unanswered (an answered check would make the sender a peer-reflexive candidate)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

    async def add_loopback_candidate(self, remote_candidate) -> None:
        if remote_candidate is not None and not _is_loopback(remote_candidate.host):
            return
        await _original_add_remote_candidate(self, remote_candidate)

    def request_from_loopback(self, message, addr, protocol) -> None:
        if _is_loopback(addr[0]):
            _original_request_received(self, message, addr, protocol)

    aioice.ice.Connection.add_remote_candidate = add_loopback_candidate
    aioice.ice.Connection.request_received = request_from_loopback


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an mDNS name (*.local) or other hostname: not known to be loopback
        return False


def end_consent_checks_of_closed_connections() -> None:
    """Process-wide and idempotent: consent checks (RFC 7675) that start on a closed connection end at once.

    aioice 0.13 starts them when ICE completes, even when the connection was closed meanwhile (`connect` resumes
    after `close`, which had nothing to cancel yet); with no nominated pair left they then wake every ~5 s forever.
    A WHIP DELETE right after its POST left one such task behind in a third of sessions (`lcmlive soak`).
    """
    original = aioice.ice.Connection.query_consent
    if original.__module__ == __name__:  # already the one below
        return

    async def query_consent(self) -> None:
        if self._closing:
            return
        await original(self)

    aioice.ice.Connection.query_consent = query_consent
