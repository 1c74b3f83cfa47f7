"""What people testing with dig see: the real ``dig`` binary against the demo server.

Checks dig's own text output (status line, header flags, section lines), so a reply that
dnspython accepts but dig renders oddly would show up here. Expected values come from
config/demo-cluster.yaml and tests/data/extra-cluster.yaml. A missing dig fails the
tests: it is a documented dependency of this suite.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

from conftest import RunningServer

_HEADER = re.compile(r";; ->>HEADER<<- opcode: (\w+), status: (\w+), id: \d+")
_FLAGS = re.compile(r";; flags: ([a-z ]*); QUERY: (\d+), ANSWER: (\d+), AUTHORITY: (\d+), "
                    r"ADDITIONAL: (\d+)")
_SECTION = re.compile(r";; (QUESTION|ANSWER|AUTHORITY|ADDITIONAL) SECTION:")
_SERVER = re.compile(r";; SERVER: \S+ \((UDP|TCP)\)")


@dataclass
class Dig:
    """dig's output, split into the parts the tests look at."""

    text: str
    status: str = ""
    flags: frozenset[str] = frozenset()
    counts: tuple[int, int, int, int] = (0, 0, 0, 0)
    transport: str = ""
    sections: dict[str, list[str]] = field(default_factory=dict)

    def lines(self, section: str) -> list[str]:
        """Records of a section with whitespace runs collapsed to one space."""
        return self.sections.get(section, [])


def parse_dig(text: str) -> Dig:
    out = Dig(text)
    current: str | None = None
    for line in text.splitlines():
        if m := _HEADER.match(line):
            out.status = m.group(2)
        elif m := _FLAGS.match(line):
            out.flags = frozenset(m.group(1).split())
            out.counts = (int(m.group(2)), int(m.group(3)), int(m.group(4)),
                          int(m.group(5)))
        elif m := _SECTION.match(line):
            current = m.group(1)
            out.sections[current] = []
        elif m := _SERVER.match(line):
            out.transport = m.group(1)
        elif not line.strip():
            current = None
        elif current is not None and not line.startswith(";;"):
            out.sections[current].append(" ".join(line.split()))
    return out


@pytest.fixture(scope="session")
def dig_path() -> str:
    path = shutil.which("dig")
    if path is None:
        pytest.fail("the dig binary is not installed (apt-get install dnsutils / bind9-dnsutils)")
    return path


def run_dig(dig_path: str, server: RunningServer, *args: str) -> Dig:
    proc = subprocess.run(
        [dig_path, f"@{server.host}", "-p", str(server.port), "+tries=1", "+time=3", *args],
        capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode == 0, f"dig exited {proc.returncode}: {proc.stderr}{proc.stdout}"
    result = parse_dig(proc.stdout)
    assert result.status, f"no status line in dig output:\n{proc.stdout}"
    return result


# ------------------------------------------------------------------------------- tests


def test_dig_a_for_a_cluster_ip_service(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "httpenv.default.svc.cluster.local", "A")
    assert out.status == "NOERROR"
    assert {"qr", "aa"} <= out.flags
    assert out.counts[:2] == (1, 1)
    assert out.lines("QUESTION") == [";httpenv.default.svc.cluster.local. IN A"]
    assert out.lines("ANSWER") == ["httpenv.default.svc.cluster.local. 5 IN A 10.108.189.10"]
    assert out.transport == "UDP"


def test_dig_headless_service_lists_every_ready_endpoint(
        dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "web-headless.default.svc.cluster.local")
    assert out.status == "NOERROR"
    assert "aa" in out.flags
    assert sorted(out.lines("ANSWER")) == [
        "web-headless.default.svc.cluster.local. 5 IN A 10.244.1.51",
        "web-headless.default.svc.cluster.local. 5 IN A 10.244.2.52",
    ]


def test_dig_srv_with_targets_in_additional(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "_amqp._tcp.rabbitmq.default.svc.cluster.local", "SRV")
    assert out.status == "NOERROR"
    assert "aa" in out.flags
    assert sorted(out.lines("ANSWER")) == [
        f"_amqp._tcp.rabbitmq.default.svc.cluster.local. 5 IN SRV 0 33 5672 "
        f"rabbitmq-{i}.rabbitmq.default.svc.cluster.local." for i in range(3)]
    assert sorted(out.lines("ADDITIONAL")) == [
        "rabbitmq-0.rabbitmq.default.svc.cluster.local. 5 IN A 10.244.1.31",
        "rabbitmq-1.rabbitmq.default.svc.cluster.local. 5 IN A 10.244.2.32",
        "rabbitmq-2.rabbitmq.default.svc.cluster.local. 5 IN A 10.244.1.33",
    ]


def test_dig_reverse_lookup_of_a_cluster_ip(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "-x", "10.108.189.10")
    assert out.status == "NOERROR"
    assert "aa" in out.flags
    assert out.lines("ANSWER") == [
        "10.189.108.10.in-addr.arpa. 5 IN PTR httpenv.default.svc.cluster.local."]


def test_dig_reverse_lookup_of_an_ipv6_cluster_ip(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "-x", "fd00:10:96::7c5")
    assert out.status == "NOERROR"
    assert out.lines("ANSWER") == [
        "5.c.7.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa. 5 IN PTR "
        "dual.default.svc.cluster.local."]


def test_dig_reverse_lookup_of_an_endpoint_selected_by_two_services(
        dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "-x", "10.244.1.11")
    owner = "11.1.244.10.in-addr.arpa. 5 IN PTR"
    assert sorted(out.lines("ANSWER")) == [
        f"{owner} 10-244-1-11.httpenv-headless.default.svc.cluster.local.",
        f"{owner} 10-244-1-11.httpenv.default.svc.cluster.local.",
    ]


def test_dig_nxdomain_for_a_missing_service(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "nosuch.default.svc.cluster.local")
    assert out.status == "NXDOMAIN"
    assert "aa" in out.flags
    assert out.counts[1] == 0
    [soa] = out.lines("AUTHORITY")
    assert re.fullmatch(r"cluster\.local\. 5 IN SOA ns\.dns\.cluster\.local\. "
                        r"hostmaster\.cluster\.local\. \d+ 7200 1800 86400 5", soa), soa


def test_dig_nodata_for_an_existing_name_without_that_type(
        dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "httpenv.default.svc.cluster.local", "AAAA")
    assert out.status == "NOERROR"
    assert "aa" in out.flags
    assert out.counts[1:3] == (0, 1)
    assert "ANSWER" not in out.sections
    assert out.lines("AUTHORITY")[0].startswith("cluster.local. 5 IN SOA ns.dns.cluster.local. ")


def test_dig_over_tcp(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "+tcp", "svc-clusterip-httpd.default.svc.cluster.local")
    assert out.transport == "TCP"
    assert out.status == "NOERROR"
    assert "aa" in out.flags
    assert out.lines("ANSWER") == [
        "svc-clusterip-httpd.default.svc.cluster.local. 5 IN A 10.99.76.207"]


def test_dig_mixed_case_name_keeps_its_case(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "HttpEnv.DEFAULT.svc.Cluster.Local", "A")
    assert out.status == "NOERROR"
    assert out.lines("QUESTION") == [";HttpEnv.DEFAULT.svc.Cluster.Local. IN A"]
    assert out.lines("ANSWER") == ["HttpEnv.DEFAULT.svc.Cluster.Local. 5 IN A 10.108.189.10"]


def test_dig_dns_version_txt(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "dns-version.cluster.local", "TXT")
    assert out.status == "NOERROR"
    assert out.lines("ANSWER") == ['dns-version.cluster.local. 5 IN TXT "1.1.0"']


def test_dig_external_name_cname(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "queue.default.svc.cluster.local")
    assert out.status == "NOERROR"
    answer = out.lines("ANSWER")
    assert answer[0] == ("queue.default.svc.cluster.local. 5 IN CNAME "
                         "rabbitmq.default.svc.cluster.local.")
    assert sorted(answer[1:]) == [
        "rabbitmq.default.svc.cluster.local. 5 IN A 10.244.1.31",
        "rabbitmq.default.svc.cluster.local. 5 IN A 10.244.1.33",
        "rabbitmq.default.svc.cluster.local. 5 IN A 10.244.2.32",
    ]


def test_dig_without_edns_gets_no_opt_record(dig_path: str, demo: RunningServer) -> None:
    out = run_dig(dig_path, demo, "+noedns", "kubernetes.default.svc.cluster.local")
    assert out.status == "NOERROR"
    assert "OPT PSEUDOSECTION" not in out.text
    assert out.lines("ANSWER") == ["kubernetes.default.svc.cluster.local. 5 IN A 10.96.0.1"]
