"""§S2.4, §S2.7, §S2.8: every path that turns a query's label into an address, under
generated labels (hypothesis).

Three places read an address out of a name a client chose: pod names
(``<a-b-c-d>.<ns>.pod.<zone>``, ``names.ip_from_dashed``), the dashed labels of endpoint
names (the same reading, in the negative answers' explanations) and reverse names
(``names.ip_from_reverse``). Whatever the label, the reading either says "not an
address" or gives one a record can carry, and the server answers the name with NOERROR or
NXDOMAIN: never SERVFAIL, never an exception, never an ERROR in the log. Labels are drawn
from every octet (the server decodes labels as latin-1, so Unicode digits such as "²" and
the "%" of an IPv6 zone index can reach it).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct

import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterdns import names
from clusterdns.config import Config, PodsMode, SourceSpec
from clusterdns.handler import Handler
from clusterdns.snapshot import SnapshotRef, unsynced
from clusterdns.source.dump import load_files
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER, RunningServer

SETTINGS = settings(max_examples=800, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Labels as a client sends them: any octets, and octets near the address alphabet.
octet_labels = st.binary(min_size=1, max_size=63)
address_like = st.text(alphabet="0123456789abcdefABCDEF-:.%²³¹٣", min_size=1,
                       max_size=45).map(lambda t: t.encode("utf-8")[:63])
near_addresses = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: names.dashed_ip(str(ip))),
    st.ip_addresses(v=6).map(lambda ip: names.dashed_ip(str(ip))),
).flatmap(lambda label: st.sampled_from([
    label, label + "%25", label + "%eth0", "0" + label, label.upper(), label + "-",
    label.replace("-", "", 1), label.replace("0", "²")])).map(lambda t: t.encode("utf-8")[:63])
labels = st.one_of(octet_labels, address_like, near_addresses)


def handler(pods: PodsMode) -> Handler:
    config = Config(zones=("cluster.local", "in-addr.arpa", "ip6.arpa"),
                    source=SourceSpec("file", (DEMO_CLUSTER, EXTRA_CLUSTER)), pods=pods)
    ref = SnapshotRef(unsynced(config))
    ref.publish_cluster(load_files(config.source.paths).cluster, config)
    return Handler(ref)


HANDLERS = {mode: handler(mode) for mode in PodsMode}


def query(name_labels: list[bytes], qtype: int) -> bytes:
    wire_name = b"".join(bytes([len(label)]) + label for label in name_labels) + b"\x00"
    return struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + wire_name + struct.pack(
        "!HH", qtype, 1)


def fits(name_labels: list[bytes]) -> bool:
    return sum(len(label) + 1 for label in name_labels) + 1 <= 255


class _Errors(logging.Handler):
    """Collects the ERROR records logged while a check runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


ERRORS = _Errors()
logging.getLogger("clusterdns").addHandler(ERRORS)


def no_errors() -> None:
    assert not ERRORS.seen, ERRORS.seen


def answer(mode: PodsMode, name_labels: list[bytes], qtype: int) -> tuple[int, bytes]:
    ERRORS.seen.clear()
    h = HANDLERS[mode]
    errors = h.stats.errors
    reply = h.handle(query(name_labels, qtype))
    assert isinstance(reply, bytes)
    assert h.stats.errors == errors, f"exception while answering {name_labels!r}"
    return reply[3] & 0x0F, reply


# ------------------------------------------------------------------ the readings


@SETTINGS
@given(labels)
def test_a_dashed_label_reads_as_an_address_a_record_can_carry_or_as_none(raw: bytes) -> None:
    label = raw.decode("latin-1").lower()
    ip = names.ip_from_dashed(label)
    if ip is None:
        return
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    socket.inet_pton(family, ip)  # what the reply writer does with it
    assert names.ip_from_dashed(names.dashed_ip(ip)) == ip
    assert str(ipaddress.ip_address(ip)) == ip


@SETTINGS
@given(st.lists(labels, min_size=1, max_size=34), st.sampled_from(["in-addr.arpa", "ip6.arpa"]))
def test_a_reverse_name_reads_as_the_address_it_stands_for_or_as_none(
        parts: list[bytes], zone: str) -> None:
    name = ".".join([p.decode("latin-1").lower() for p in parts] + [zone])
    ip = names.ip_from_reverse(name)
    if ip is not None:
        assert names.reverse_name(ip) == name


@pytest.mark.parametrize("ip", ["10.244.1.11", "0.0.0.0", "255.255.255.255", "fd00:10:244::",
                                "::1", "fe80::1", "2001:db8::8:800:200c:417a"])
def test_every_address_reads_back_from_its_dashed_label_and_its_reverse_name(ip: str) -> None:
    assert names.ip_from_dashed(names.dashed_ip(ip)) == ip
    assert names.ip_from_reverse(names.reverse_name(ip)) == ip


@pytest.mark.parametrize("label", ["fe80--1%25", "fe80--1%eth0", "²-2-3-4", "1-2-3-٣",
                                   "01-2-3-4", "1-2-3-4-", "FE80--1", "g--1", "1.2.3.4"])
def test_labels_that_only_look_like_addresses_are_not_addresses(label: str) -> None:
    assert names.ip_from_dashed(label) is None


@pytest.mark.parametrize("text", ["fe80::1%eth0", "fe80::1%25", "10.0.0.1%1"])
def test_an_address_with_a_zone_index_from_the_api_is_not_an_address(text: str) -> None:
    assert names.canonical_ip(text) is None


# -------------------------------------------------------------- through the handler


@SETTINGS
@given(labels, st.sampled_from(list(PodsMode)), st.sampled_from([1, 28, 255, 16]))
def test_s2_8_any_pod_label_is_answered_noerror_or_nxdomain_never_servfail(
        raw: bytes, mode: PodsMode, qtype: int) -> None:
    name = [raw, b"default", b"pod", b"cluster", b"local"]
    rcode, reply = answer(mode, name, qtype)
    assert rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    ip = names.ip_from_dashed(raw.decode("latin-1").lower())
    if mode is PodsMode.INSECURE and ip is not None and qtype == (28 if ":" in ip else 1):
        packed = socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)
        assert rcode == dns.rcode.NOERROR and reply.endswith(packed)
    elif mode is PodsMode.DISABLED or ip is None:
        assert rcode == dns.rcode.NXDOMAIN
    no_errors()


@SETTINGS
@given(labels, st.sampled_from([b"httpenv", b"httpenv-headless", b"rabbitmq", b"nope"]),
       st.sampled_from([1, 28, 33, 255]))
def test_s2_4_any_endpoint_label_is_answered_noerror_or_nxdomain_never_servfail(
        raw: bytes, service: bytes, qtype: int) -> None:
    name = [raw, service, b"default", b"svc", b"cluster", b"local"]
    rcode, _ = answer(PodsMode.INSECURE, name, qtype)
    assert rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    no_errors()


@SETTINGS
@given(st.lists(labels, min_size=1, max_size=34), st.sampled_from(
    [[b"in-addr", b"arpa"], [b"ip6", b"arpa"], [b"10", b"in-addr", b"arpa"]]),
    st.sampled_from([12, 1, 255]))
def test_s2_7_any_reverse_name_is_answered_noerror_or_nxdomain_never_servfail(
        parts: list[bytes], zone: list[bytes], qtype: int) -> None:
    name = parts + zone
    if not fits(name):
        return
    rcode, _ = answer(PodsMode.INSECURE, name, qtype)
    assert rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
    no_errors()


def test_s2_8_a_pod_name_with_an_ipv6_zone_index_is_nxdomain_over_the_network(
        demo: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for name in ("fe80--1%25.default.pod.cluster.local", "fe80--1%eth0.default.pod.cluster.local"):
        for tcp in (False, True):
            reply = demo.ask(name, "AAAA", tcp=tcp)
            assert reply.rcode() == dns.rcode.NXDOMAIN, name
    assert demo.ask("fe80--1.default.pod.cluster.local", "AAAA").rcode() == dns.rcode.NOERROR
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
