"""§S3 Negative answers (RFC 2308, RFC 8914), end to end over UDP and TCP.

Expected values come from config/demo-cluster.yaml and tests/data/extra-cluster.yaml:
httpenv (ClusterIP 10.108.189.10, IPv4 only), rabbitmq (headless, IPv4 endpoints with
hostnames rabbitmq-0..2, named ports amqp/epmd), empty-headless (headless, no endpoints),
prod (a namespace without services), team-a/v6 (headless, IPv6 endpoints only). The zone
SOA of every zone is ``ns.dns.<zone>. hostmaster.<zone>. <serial> 7200 1800 86400 <ttl>``
with record TTL ``ttl`` (5 by default).
"""

from __future__ import annotations

from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import pytest

from conftest import RunningServer, addresses

NOERROR = dns.rcode.NOERROR
NXDOMAIN = dns.rcode.NXDOMAIN
SERVFAIL = dns.rcode.SERVFAIL
REFUSED = dns.rcode.REFUSED
EDE_NOT_READY = 14


# ----------------------------------------------------------------------------- helpers


def is_tcp(proto: str) -> bool:
    return proto == "tcp"


def ede_list(msg: dns.message.Message) -> list[tuple[int, str]]:
    """(INFO-CODE, EXTRA-TEXT) of every RFC 8914 option in the reply's OPT."""
    return [(int(opt.code), opt.text or "") for opt in msg.extended_errors()]


def ede_texts(msg: dns.message.Message) -> list[str]:
    return [text for _, text in ede_list(msg)]


def soa_of(msg: dns.message.Message) -> tuple[dns.name.Name, int, dns.rdtypes.ANY.SOA.SOA]:
    """The single SOA record of the Authority section: (owner, TTL, rdata)."""
    soas = [rrset for rrset in msg.authority if rrset.rdtype == dns.rdatatype.SOA]
    assert len(soas) == 1, msg.to_text()
    assert len(msg.authority) == 1, msg.to_text()
    rrset = soas[0]
    assert len(rrset) == 1, msg.to_text()
    rdata = rrset[0]
    assert isinstance(rdata, dns.rdtypes.ANY.SOA.SOA)
    return rrset.name, rrset.ttl, rdata


def assert_negative(msg: dns.message.Message, rcode: dns.rcode.Rcode, zone: str) -> None:
    """RFC 2308: rcode, AA, empty Answer and the zone SOA in Authority with the negative TTL."""
    assert msg.rcode() == rcode, msg.to_text()
    assert msg.flags & dns.flags.QR
    assert msg.flags & dns.flags.AA, "negative answers are authoritative"
    assert not msg.answer, msg.to_text()
    owner, _, soa = soa_of(msg)
    assert owner == dns.name.from_text(zone)
    assert soa.mname == dns.name.from_text(f"ns.dns.{zone}")
    assert soa.rname == dns.name.from_text(f"hostmaster.{zone}")
    assert (soa.refresh, soa.retry, soa.expire) == (7200, 1800, 86400)


def negative_ttl_rule_holds(server: RunningServer, msg: dns.message.Message, zone: str,
                            tcp: bool) -> None:
    """The Authority SOA TTL is min(SOA record TTL, SOA MINIMUM), read from the apex SOA."""
    apex = server.ask(zone, "SOA", tcp=tcp)
    assert apex.rcode() == NOERROR
    apex_ttl = apex.answer[0].ttl
    apex_soa = apex.answer[0][0]
    _, ttl, soa = soa_of(msg)
    assert soa == apex_soa, "Authority carries the zone's own SOA"
    assert ttl == min(apex_ttl, apex_soa.minimum)


# ------------------------------------------------------------------------- NODATA


@pytest.mark.parametrize("name", [
    "httpenv.default.svc.cluster.local",            # ClusterIP, IPv4 only
    "rabbitmq.default.svc.cluster.local",           # headless, IPv4 endpoints
    "rabbitmq-0.rabbitmq.default.svc.cluster.local",  # endpoint name, IPv4 only
    "3d-render.team-a.svc.cluster.local",
])
def test_s3_aaaa_for_an_ipv4_only_service_is_nodata_not_nxdomain(
        demo: RunningServer, proto: str, name: str) -> None:
    msg = demo.ask(name, "AAAA", tcp=is_tcp(proto))
    assert_negative(msg, NOERROR, "cluster.local")
    # ...and the name really does exist with an A record.
    assert addresses(demo.ask(name, "A", tcp=is_tcp(proto)))


def test_s3_a_for_an_ipv6_only_headless_service_is_nodata(demo: RunningServer, proto: str) -> None:
    name = "v6.team-a.svc.cluster.local"
    assert_negative(demo.ask(name, "A", tcp=is_tcp(proto)), NOERROR, "cluster.local")
    assert addresses(demo.ask(name, "AAAA", tcp=is_tcp(proto)), "AAAA")


@pytest.mark.parametrize("name", [
    "svc.cluster.local",
    "pod.cluster.local",
    "default.svc.cluster.local",
    "prod.svc.cluster.local",  # a namespace with no services at all
    "_tcp.rabbitmq.default.svc.cluster.local",
])
@pytest.mark.parametrize("rdtype", ["A", "AAAA", "TXT", "SRV"])
def test_s3_empty_non_terminals_are_nodata(
        demo: RunningServer, proto: str, name: str, rdtype: str) -> None:
    assert_negative(demo.ask(name, rdtype, tcp=is_tcp(proto)), NOERROR, "cluster.local")


@pytest.mark.parametrize(("name", "rdtype"), [
    ("dns-version.cluster.local", "A"),
    ("httpenv.default.svc.cluster.local", "TXT"),
    ("_amqp._tcp.rabbitmq.default.svc.cluster.local", "A"),
    ("queue.default.svc.cluster.local", "TXT"),  # ExternalName: CNAME, then the target's NODATA
    ("cluster.local", "A"),
])
def test_s3_an_existing_name_without_the_asked_type_is_nodata(
        demo: RunningServer, proto: str, name: str, rdtype: str) -> None:
    msg = demo.ask(name, rdtype, tcp=is_tcp(proto))
    assert msg.rcode() == NOERROR
    assert msg.flags & dns.flags.AA
    assert not [r for r in msg.answer if r.rdtype == dns.rdatatype.from_text(rdtype)]
    soa_of(msg)


def test_s3_reverse_zone_empty_non_terminal_is_nodata(demo: RunningServer, proto: str) -> None:
    # 10.in-addr.arpa lies between the apex and the PTR records of 10.x.y.z.
    assert_negative(demo.ask("10.in-addr.arpa", "PTR", tcp=is_tcp(proto)), NOERROR,
                    "in-addr.arpa")


# ----------------------------------------------------------------------- NXDOMAIN


@pytest.mark.parametrize(("name", "zone"), [
    ("nope.default.svc.cluster.local", "cluster.local"),        # no such service
    ("httpenv.nope.svc.cluster.local", "cluster.local"),        # no such namespace
    ("nope.svc.cluster.local", "cluster.local"),                # namespace itself missing
    ("nope.cluster.local", "cluster.local"),
    ("empty-headless.default.svc.cluster.local", "cluster.local"),  # §S2.3: none ready
    ("nope.rabbitmq.default.svc.cluster.local", "cluster.local"),  # no such endpoint
    ("_nope._tcp.rabbitmq.default.svc.cluster.local", "cluster.local"),  # no such port
    ("99.99.99.10.in-addr.arpa", "in-addr.arpa"),
])
@pytest.mark.parametrize("rdtype", ["A", "AAAA"])
def test_s3_names_that_do_not_exist_are_nxdomain(
        demo: RunningServer, proto: str, name: str, zone: str, rdtype: str) -> None:
    assert_negative(demo.ask(name, rdtype, tcp=is_tcp(proto)), NXDOMAIN, zone)


# ---------------------------------------------------------------- SOA / negative TTL


@pytest.mark.parametrize(("name", "rdtype", "zone"), [
    ("httpenv.default.svc.cluster.local", "AAAA", "cluster.local"),   # NODATA
    ("svc.cluster.local", "A", "cluster.local"),                      # NODATA (ENT)
    ("nope.default.svc.cluster.local", "A", "cluster.local"),         # NXDOMAIN
    ("99.99.99.10.in-addr.arpa", "PTR", "in-addr.arpa"),              # NXDOMAIN (reverse)
])
def test_s3_negative_answers_carry_the_zone_soa_with_ttl_min_of_ttl_and_soa_minimum(
        demo: RunningServer, proto: str, name: str, rdtype: str, zone: str) -> None:
    msg = demo.ask(name, rdtype, tcp=is_tcp(proto))
    negative_ttl_rule_holds(demo, msg, zone, is_tcp(proto))
    _, ttl, soa = soa_of(msg)
    assert soa.minimum == 5 and ttl == 5


def test_s3_negative_ttl_rule_holds_with_a_configured_ttl_of_30(
        make_server: Callable[..., RunningServer], proto: str) -> None:
    server = make_server(ttl=30)
    tcp = is_tcp(proto)
    for name, rdtype in [("httpenv.default.svc.cluster.local", "AAAA"),
                         ("nope.default.svc.cluster.local", "A")]:
        msg = server.ask(name, rdtype, tcp=tcp)
        negative_ttl_rule_holds(server, msg, "cluster.local", tcp)
        _, ttl, soa = soa_of(msg)
        assert soa.minimum == 30
        assert ttl == min(30, soa.minimum) == 30
    # Positive answers use the configured TTL too (so the SOA TTL is 30, not a default).
    assert server.ask("httpenv.default.svc.cluster.local", tcp=tcp).answer[0].ttl == 30


# ------------------------------------------------------------ before the first sync


UNSYNCED_NAMES = [
    ("httpenv.default.svc.cluster.local", "A"),
    ("nope.default.svc.cluster.local", "A"),
    ("svc.cluster.local", "A"),
    ("cluster.local", "SOA"),
    ("dns-version.cluster.local", "TXT"),
    ("10.0.96.10.in-addr.arpa", "PTR"),
    ("1.0.0.0.ip6.arpa", "PTR"),
    ("nope.cluster.local", "AAAA"),
]


def test_s3_before_the_first_sync_every_name_in_our_zones_is_servfail_with_ede_not_synced(
        make_server: Callable[..., RunningServer], proto: str) -> None:
    server = make_server(publish=False)
    for name, rdtype in UNSYNCED_NAMES:
        msg = server.ask(name, rdtype, tcp=is_tcp(proto))
        assert msg.rcode() == SERVFAIL, f"{name} {rdtype}: {msg.to_text()}"
        assert not msg.answer
        eds = ede_list(msg)
        assert len(eds) == 1, msg.to_text()
        code, text = eds[0]
        assert code == EDE_NOT_READY
        assert "not synced" in text


def test_s3_before_the_first_sync_servfail_without_edns_has_no_opt(
        make_server: Callable[..., RunningServer], proto: str) -> None:
    server = make_server(publish=False)
    msg = server.ask("httpenv.default.svc.cluster.local", tcp=is_tcp(proto), edns=False)
    assert msg.rcode() == SERVFAIL
    assert msg.edns == -1


def test_s3_before_the_first_sync_out_of_zone_names_are_still_refused(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(publish=False)
    assert server.ask("example.com").rcode() == REFUSED


def test_s3_before_the_first_sync_answers_appear_once_a_snapshot_is_published(
        make_server: Callable[..., RunningServer], proto: str) -> None:
    server = make_server(publish=False)
    tcp = is_tcp(proto)
    assert server.ask("httpenv.default.svc.cluster.local", tcp=tcp).rcode() == SERVFAIL
    source = server.app.file
    assert source is not None
    server.call(lambda: server.app.publish(source.load()))
    msg = server.ask("httpenv.default.svc.cluster.local", tcp=tcp)
    assert msg.rcode() == NOERROR
    assert addresses(msg) == ["10.108.189.10"]
    assert not ede_list(msg)
    # Negative answers are real negative answers from now on.
    assert_negative(server.ask("nope.default.svc.cluster.local", tcp=tcp), NXDOMAIN,
                    "cluster.local")
    assert_negative(server.ask("httpenv.default.svc.cluster.local", "AAAA", tcp=tcp), NOERROR,
                    "cluster.local")


# ------------------------------------------------------------- RFC 8914 explanations


@pytest.mark.parametrize(("name", "rdtype", "rcode", "text"), [
    ("httpenv.nope.svc.cluster.local", "A", NXDOMAIN, 'namespace "nope" not found'),
    ("nope.svc.cluster.local", "A", NXDOMAIN, 'namespace "nope" not found'),
    ("empty-headless.default.svc.cluster.local", "A", NXDOMAIN,
     'service "empty-headless" has 0 ready endpoints'),
    ("nope.default.svc.cluster.local", "A", NXDOMAIN, 'service "nope" not found'),
])
def test_s3_negative_answers_explain_themselves_with_an_extended_error_text(
        demo: RunningServer, proto: str, name: str, rdtype: str, rcode: dns.rcode.Rcode,
        text: str) -> None:
    msg = demo.ask(name, rdtype, tcp=is_tcp(proto))
    assert msg.rcode() == rcode
    texts = ede_texts(msg)
    assert len(texts) == 1, msg.to_text()
    assert text in texts[0]


@pytest.mark.parametrize(("name", "rdtype"), [
    ("httpenv.default.svc.cluster.local", "AAAA"),
    ("svc.cluster.local", "A"),
    ("_tcp.rabbitmq.default.svc.cluster.local", "SRV"),
])
def test_s3_nodata_answers_explain_themselves_with_an_extended_error_text(
        demo: RunningServer, proto: str, name: str, rdtype: str) -> None:
    msg = demo.ask(name, rdtype, tcp=is_tcp(proto))
    assert msg.rcode() == NOERROR and not msg.answer
    texts = ede_texts(msg)
    assert len(texts) == 1 and texts[0], msg.to_text()


@pytest.mark.parametrize(("name", "rdtype"), [
    ("httpenv.nope.svc.cluster.local", "A"),
    ("empty-headless.default.svc.cluster.local", "A"),
    ("httpenv.default.svc.cluster.local", "AAAA"),
])
def test_s3_negative_answers_carry_no_extended_error_without_edns(
        demo: RunningServer, proto: str, name: str, rdtype: str) -> None:
    msg = demo.ask(name, rdtype, tcp=is_tcp(proto), edns=False)
    assert msg.edns == -1, "no OPT in the reply to a query without OPT"
    assert not msg.options
    assert msg.rcode() in (NOERROR, NXDOMAIN)
    soa_of(msg)


def test_s3_positive_answers_carry_no_extended_error(demo: RunningServer, proto: str) -> None:
    msg = demo.ask("httpenv.default.svc.cluster.local", tcp=is_tcp(proto))
    assert msg.rcode() == NOERROR and msg.answer
    assert not ede_list(msg)


# ------------------------------------------------------------------- namespaces filter


def test_s3_namespaces_filter_makes_other_namespaces_nxdomain_with_an_explanation(
        make_server: Callable[..., RunningServer], proto: str) -> None:
    server = make_server(namespaces=frozenset({"default"}))
    tcp = is_tcp(proto)
    for name in ("kube-dns.kube-system.svc.cluster.local",
                 "kube-system.svc.cluster.local",
                 "3d-render.team-a.svc.cluster.local"):
        msg = server.ask(name, tcp=tcp)
        assert_negative(msg, NXDOMAIN, "cluster.local")
        texts = ede_texts(msg)
        assert len(texts) == 1, msg.to_text()
        ns = name.split(".svc.")[0].split(".")[-1]
        assert f'namespace "{ns}"' in texts[0]
        assert "not served" in texts[0]
    # The served namespace is untouched.
    assert addresses(server.ask("httpenv.default.svc.cluster.local", tcp=tcp)) == [
        "10.108.189.10"]
    assert_negative(server.ask("default.svc.cluster.local", tcp=tcp), NOERROR, "cluster.local")


# ------------------------------------------------------------------- out of zone


@pytest.mark.parametrize("name", ["example.com", "kubernetes.io", "local", "cluster.local.example"])
def test_s3_out_of_zone_names_are_refused_without_upstreams(
        demo: RunningServer, proto: str, name: str) -> None:
    msg = demo.ask(name, tcp=is_tcp(proto))
    assert msg.rcode() == REFUSED
    assert not msg.answer and not msg.authority
    assert not msg.flags & dns.flags.AA


# ---------------------------------------------- the explanation gives way to records


def long_name(length: int, tail: str = "default.svc.cluster.local") -> str:
    """A name of about ``length`` characters below ``tail``, in labels of up to 60."""
    need = length - len(tail) - 1
    labels = []
    while need > 0:
        size = min(60, need - 1) if need > 1 else 1
        labels.append("x" * size)
        need -= size + 1
    return ".".join([*labels, tail])


@pytest.mark.parametrize("length", [190, 220, 253])
@pytest.mark.parametrize("rdtype", ["A", "AAAA", "TXT"])
def test_s3_a_long_nxdomain_at_edns_512_keeps_its_soa_and_shortens_the_explanation(
        demo: RunningServer, length: int, rdtype: str) -> None:
    name = long_name(length)
    msg = demo.ask(name, rdtype, payload=512)
    wire = msg.to_wire()
    assert msg.rcode() == NXDOMAIN
    assert not msg.flags & dns.flags.TC, "TC set although the required SOA fits"
    soa_of(msg)  # exactly one SOA in Authority
    assert len(wire) <= 512
    full = ede_texts(demo.ask(name, rdtype, payload=4096))
    assert len(full) == 1 and full[0]
    texts = ede_texts(msg)
    if texts:  # what is left of the text is the start of it, and it fills the room
        assert len(texts) == 1 and full[0].startswith(texts[0])
        assert texts[0] == full[0] or len(wire) == 512
    else:  # no room even for an empty explanation
        assert len(wire) > 512 - 6


def test_s3_an_explanation_that_fits_is_kept_whole(demo: RunningServer) -> None:
    name = long_name(120, "nope.svc.cluster.local")
    msg = demo.ask(name, "A", payload=1232)
    assert msg.rcode() == NXDOMAIN and not msg.flags & dns.flags.TC
    assert ede_texts(msg) == ['namespace "nope" not found']
