"""Zone transfers: who may have one, what a zone holds, and one transfer as it runs.

Why this module exists: a zone transfer (AXFR, and IXFR answered in full, RFC 1995 §4)
is the one answer that is not a single message. It lists a whole zone from one snapshot
generation, possibly hundreds of thousands of records, in many messages that the server
writes one at a time as the client reads them. The rules of that answer live here, in
pure code: the allow-list (``TransferPolicy``, CoreDNS's ``transfer { to ... }``), which
names belong to a zone (``paced_records``: the names whose most specific zone of ours it
is), and ``Transfer``, an iterator of finished messages that holds its snapshot to the
end, so every message comes from the generation the first SOA names, however many
publishes happen meanwhile. The socket side (back-pressure, yielding the event loop
between messages, stopping when the client goes away) is ``server``'s; the checks before
a transfer starts are ``handler``'s.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from clusterdns import names, wire
from clusterdns.config import Config
from clusterdns.records import Record, RRType
from clusterdns.snapshot import Snapshot

log = logging.getLogger(__name__)

PAUSE = 64
"""Records a transfer writes before it lets the event loop run other work (about 1 ms
of it: making and writing a record takes 10 to 15 us); see ``wire.transfer_messages``."""
PAUSE_NAMES = 2048
"""Names of other zones a transfer passes over before it lets the loop run (about 1 ms:
a small zone is found among all the snapshot's names)."""
MAX_TRANSFERS = 2
"""Transfers running at once (per process); one more is REFUSED with an extended error.
Each holds the generation it started from, so this also bounds how many old snapshots
transfers keep alive."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# What ``clusterdns_transfers_total{result}`` counts.
COMPLETE = "complete"  # every message written
ABORTED = "aborted"  # the client went away (or the server stopped) part-way
UP_TO_DATE = "up_to_date"  # IXFR from a client holding the current serial: one SOA
REFUSED = "refused"  # over UDP, not allowed, not enabled for the zone, or too many running


@dataclass(frozen=True, slots=True)
class TransferPolicy:
    """Who may transfer which zones: ``transfer_to`` and ``transfer_zones`` of the config."""

    anyone: bool
    networks: tuple[Network, ...]
    zones: frozenset[str]  # empty: every zone of ours

    @classmethod
    def of(cls, config: Config) -> TransferPolicy | None:
        """The config's policy; None when transfers are off (no ``transfer_to``)."""
        if not config.transfer_to:
            return None
        nets = tuple(ipaddress.ip_network(peer) for peer in config.transfer_to if peer != "*")
        return cls("*" in config.transfer_to, nets, frozenset(config.transfer_zones))

    def allows(self, host: str) -> bool:
        """Whether a client at ``host`` (an IP address, as the socket gives it) may."""
        if self.anyone:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def covers(self, zone: str) -> bool:
        return not self.zones or zone in self.zones


def paced_records(snap: Snapshot, zone: str, records: int = 0,
                  names_passed: int = 0) -> Iterator[Record | None]:
    """Every record of ``zone`` except its SOA, in no particular order (RFC 5936 §2.2):
    those of the names whose most specific zone of ours is ``zone`` (a narrower zone of
    ours, such as ``10.in-addr.arpa`` inside ``in-addr.arpa``, is a zone of its own).
    A None after every ``records`` records and after every ``names_passed`` names of
    other zones: points where the event loop may run other work (0: none).

    A generator over the snapshot's frozen index: it holds no list of names, and the
    index it reads is never written again, whatever is published meanwhile.
    """
    inner = tuple("." + z for z in snap.zones if z != zone and names.is_subdomain(z, zone))
    suffix = "." + zone
    nodes = snap.nodes
    made = passed = 0
    for name in nodes:
        if (not name.endswith(suffix) and name != zone) or (
                inner and any(name.endswith(z) or name == z[1:] for z in inner)):
            passed += 1
            if passed == names_passed:
                passed = 0
                yield None
            continue
        node = nodes.get(name)
        if node is None:
            continue
        for rtype in node:
            if rtype == RRType.SOA and name == zone:
                continue
            for rec in node[rtype]:
                yield rec
                made += 1
                if made == records:
                    made = 0
                    yield None


class Transfer:
    """One full transfer of a zone as it runs: an iterator of finished messages.

    Each ``next`` writes one message (``wire.transfer_messages``), or returns ``b""``
    after every ``PAUSE`` records and ``PAUSE_NAMES`` names of other zones: nothing to
    send yet, a turn for other work. The snapshot it was
    started from stays referenced until the last message is made, so every message is of
    that generation. ``finish`` must be called once it ends, complete or not: it gives the
    transfer's place back (``on_finish``) and logs the outcome.
    """

    def __init__(self, query: wire.Query, snap: Snapshot, zone: str, peer: str,
                 server_max: int, on_finish: Callable[[Transfer, str], None]) -> None:
        self.zone = zone
        self.serial = snap.serial
        self.peer = peer
        self.records = 0  # records of the zone taken so far, the two SOAs apart
        self.messages = 0
        self.bytes = 0
        self._on_finish: Callable[[Transfer, str], None] | None = on_finish
        self._messages = wire.transfer_messages(
            query, snap.soa(zone), self._counted(paced_records(snap, zone, PAUSE, PAUSE_NAMES)),
            server_max)

    def _counted(self, records: Iterable[Record | None]) -> Iterator[Record | None]:
        for rec in records:
            if rec is not None:
                self.records += 1
            yield rec

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        message = next(self._messages)
        if message:
            self.messages += 1
            self.bytes += len(message)
        return message

    @property
    def finished(self) -> bool:
        return self._on_finish is None

    def finish(self, complete: bool) -> None:
        """The transfer ended: every message written (``complete``) or not. Idempotent."""
        on_finish, self._on_finish = self._on_finish, None
        if on_finish is None:
            return
        self._messages.close()  # lets the snapshot go now, not when this object does
        if complete:
            log.info("zone transfer of %s (serial %d) to %s: %d records in %d messages "
                     "(%d bytes)", self.zone, self.serial, self.peer, self.records + 2,
                     self.messages, self.bytes)
        else:
            log.info("zone transfer of %s (serial %d) to %s stopped after %d messages: "
                     "the connection closed", self.zone, self.serial, self.peer,
                     self.messages)
        on_finish(self, COMPLETE if complete else ABORTED)
