"""convert: raw API dicts -> slim objects, and malformed input -> ConvertError naming the field."""

from __future__ import annotations

import copy
import ipaddress
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterdns import names
from clusterdns.convert import SUPPORTED_KINDS, ConvertError, convert
from clusterdns.objects import (
    Endpoint,
    EndpointSlice,
    Namespace,
    Pod,
    Port,
    Service,
    ServiceKind,
)

LABEL = "kubernetes.io/service-name"


def service(spec: Any, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "default", **meta}, "spec": spec}


def endpoint_slice(endpoints: Any = None, ports: Any = None, address_type: Any = "IPv4",
                   **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web-abc", "namespace": "default", "labels": {LABEL: "web"}},
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports,
        **extra,
    }


def pod(status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "web-1", "namespace": "default"}, "status": status}


def convert_service(spec: Any) -> Service:
    obj = convert("Service", service(spec))
    assert isinstance(obj, Service)
    return obj


def convert_slice(**kwargs: Any) -> EndpointSlice:
    obj = convert("EndpointSlice", endpoint_slice(**kwargs))
    assert isinstance(obj, EndpointSlice)
    return obj


def one_endpoint(raw: dict[str, Any], address_type: str = "IPv4") -> Endpoint:
    (ep,) = convert_slice(endpoints=[raw], address_type=address_type).endpoints
    return ep


def convert_pod(status: Any) -> Pod:
    obj = convert("Pod", pod(status))
    assert isinstance(obj, Pod)
    return obj


# --------------------------------------------------------------------------- metadata


def test_a_namespace_becomes_its_lower_cased_name() -> None:
    assert convert("Namespace", {"metadata": {"name": "Prod"}}) == Namespace("prod")


def test_names_and_namespaces_are_lower_cased_and_interned() -> None:
    raw = service({"clusterIP": "10.0.0.1"}, name="".join(["W", "eb"]), namespace="Team-A")
    svc = convert("Service", raw)
    assert isinstance(svc, Service)
    assert (svc.namespace, svc.name) == ("team-a", "web")
    assert svc.name is sys.intern("".join(["w", "eb"]))
    assert svc.namespace is sys.intern("".join(["team", "-a"]))


@pytest.mark.parametrize("namespace", ["absent", None, ""])
def test_a_namespaced_object_without_a_namespace_is_in_default(namespace: Any) -> None:
    meta: dict[str, Any] = {"name": "web-1"}
    if namespace != "absent":
        meta["namespace"] = namespace
    assert convert("Pod", {"metadata": meta}) == Pod("default", "web-1")


@pytest.mark.parametrize("kind", SUPPORTED_KINDS)
def test_every_supported_kind_converts_a_minimal_object(kind: str) -> None:
    minimal = {"metadata": {"name": "x", "labels": {LABEL: "x"}}, "addressType": "IPv4"}
    assert convert(kind, minimal).name == "x"


def test_an_unsupported_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="ConfigMap"):
        convert("ConfigMap", {"metadata": {"name": "x"}})


def test_a_convert_error_reads_field_colon_message() -> None:
    with pytest.raises(ConvertError) as info:
        convert_service({"clusterIPs": ["10.0.0.1", "10.0.0.999"]})
    assert info.value.field == "spec.clusterIPs[1]"
    assert info.value.message == '"10.0.0.999" is not an IP address'
    assert str(info.value) == 'spec.clusterIPs[1]: "10.0.0.999" is not an IP address'


def test_an_object_that_is_not_a_mapping_is_a_convert_error() -> None:
    with pytest.raises(ConvertError) as info:
        convert("Pod", [1, 2])  # type: ignore[arg-type]
    assert (info.value.field, str(info.value)) == ("", "expected a mapping, got a list")


# --------------------------------------------------------------------------- services


def test_a_cluster_ip_service_gets_every_cluster_ip_in_canonical_form() -> None:
    svc = convert_service({"clusterIP": "10.96.120.5",
                           "clusterIPs": ["10.96.120.5", "FD00:10:96:0::7C5"]})
    assert svc.kind is ServiceKind.CLUSTER_IP
    assert svc.cluster_ips == ("10.96.120.5", "fd00:10:96::7c5")


def test_cluster_ip_is_the_fallback_when_cluster_ips_is_absent() -> None:
    assert convert_service({"clusterIP": " 10.96.0.1 "}).cluster_ips == ("10.96.0.1",)


@pytest.mark.parametrize("spec", [{}, {"clusterIP": ""}, {"clusterIP": None},
                                  {"clusterIPs": []}, {"clusterIPs": None}])
def test_a_service_without_cluster_ips_has_no_addresses(spec: dict[str, Any]) -> None:
    svc = convert_service(spec)
    assert (svc.kind, svc.cluster_ips) == (ServiceKind.CLUSTER_IP, ())


@pytest.mark.parametrize("service_type", ["ClusterIP", "NodePort", "LoadBalancer"])
def test_node_port_and_load_balancer_services_are_cluster_ip_services(service_type: str) -> None:
    svc = convert_service({"type": service_type, "clusterIP": "10.0.0.1"})
    assert (svc.kind, svc.cluster_ips) == (ServiceKind.CLUSTER_IP, ("10.0.0.1",))


def test_cluster_ip_none_makes_a_headless_service() -> None:
    svc = convert_service({"clusterIP": "None", "clusterIPs": ["None"]})
    assert (svc.kind, svc.cluster_ips) == (ServiceKind.HEADLESS, ())


def test_an_external_name_service_keeps_its_normalised_target() -> None:
    svc = convert_service({"type": "ExternalName", "externalName": "HTTPBin.org."})
    assert (svc.kind, svc.external_name, svc.cluster_ips) == (
        ServiceKind.EXTERNAL_NAME, "httpbin.org", ())


def test_an_external_name_accepts_63_character_labels_and_253_characters() -> None:
    target = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(target) == 253
    svc = convert_service({"type": "ExternalName", "externalName": target})
    assert svc.external_name == target


def test_service_ports_keep_lower_cased_name_and_protocol() -> None:
    svc = convert_service({"clusterIP": "10.0.0.1", "ports": [
        {"name": "DNS", "port": 53, "protocol": "UDP"},
        {"port": 8888},
        {"name": None, "port": 9, "protocol": "sctp"},
    ]})
    assert svc.ports == (Port("dns", "udp", 53), Port("", "tcp", 8888), Port("", "sctp", 9))


def test_headless_and_external_name_services_keep_their_ports() -> None:
    ports = [{"name": "http", "port": 80, "protocol": "TCP"}]
    headless = convert_service({"clusterIP": "None", "ports": ports})
    external = convert_service({"type": "ExternalName", "externalName": "a.b", "ports": ports})
    assert headless.ports == external.ports == (Port("http", "tcp", 80),)


def test_a_service_with_null_ports_has_no_ports() -> None:
    assert convert_service({"clusterIP": "10.0.0.1", "ports": None}).ports == ()


# ---------------------------------------------------------------------- endpoint slices


def test_an_endpoint_slice_names_its_service_from_the_label() -> None:
    raw = endpoint_slice()
    raw["metadata"]["labels"][LABEL] = "Web"
    s = convert("EndpointSlice", raw)
    assert s == EndpointSlice("default", "web-abc", "web", "IPv4")


@pytest.mark.parametrize("endpoints", [None, "absent"])
def test_an_endpoint_slice_without_endpoints_has_none(endpoints: Any) -> None:
    raw = endpoint_slice()
    if endpoints == "absent":
        del raw["endpoints"]
    s = convert("EndpointSlice", raw)
    assert isinstance(s, EndpointSlice)
    assert s.endpoints == ()


def test_endpoint_addresses_are_canonicalised() -> None:
    ep = one_endpoint({"addresses": ["FD00:10:244:1:0::29"]}, "IPv6")
    assert ep.addresses == ("fd00:10:244:1::29",)


def test_fqdn_endpoint_addresses_are_kept_as_given_but_lower_cased() -> None:
    ep = one_endpoint({"addresses": ["Backend.Example.COM"]}, "FQDN")
    assert ep.addresses == ("backend.example.com",)


def test_an_endpoint_without_a_ready_condition_counts_as_ready() -> None:
    assert one_endpoint({"addresses": ["10.0.0.1"]}).ready
    assert one_endpoint({"addresses": ["10.0.0.1"], "conditions": {}}).ready
    assert one_endpoint({"addresses": ["10.0.0.1"], "conditions": None}).ready


def test_an_endpoint_with_a_null_ready_condition_counts_as_ready() -> None:
    assert one_endpoint({"addresses": ["10.0.0.1"], "conditions": {"ready": None}}).ready


def test_an_endpoint_is_not_ready_only_when_ready_is_false() -> None:
    assert one_endpoint({"addresses": ["10.0.0.1"], "conditions": {"ready": True}}).ready
    assert not one_endpoint({"addresses": ["10.0.0.1"], "conditions": {"ready": False}}).ready


def test_an_endpoint_keeps_its_lower_cased_hostname() -> None:
    ep = one_endpoint({"addresses": ["10.0.0.1"], "hostname": "RabbitMQ-0"})
    assert ep.hostname == "rabbitmq-0"
    assert one_endpoint({"addresses": ["10.0.0.1"]}).hostname == ""


def test_an_endpoint_takes_the_pod_name_only_from_a_pod_target() -> None:
    pod_target = one_endpoint({"addresses": ["10.0.0.1"],
                               "targetRef": {"kind": "Pod", "name": "Web-1"}})
    node_target = one_endpoint({"addresses": ["10.0.0.1"],
                                "targetRef": {"kind": "Node", "name": "kind-worker"}})
    no_target = one_endpoint({"addresses": ["10.0.0.1"]})
    assert (pod_target.pod_name, node_target.pod_name, no_target.pod_name) == ("web-1", "", "")


def test_slice_ports_skip_a_null_port_and_default_the_name() -> None:
    s = convert_slice(ports=[{"name": None, "port": 80, "protocol": "TCP"},
                             {"name": "all", "port": None},
                             {"port": 53, "protocol": "UDP"}])
    assert s.ports == (Port("", "tcp", 80), Port("", "udp", 53))


def test_an_endpoint_slice_with_null_ports_has_no_ports() -> None:
    assert convert_slice(ports=None).ports == ()


# ------------------------------------------------------------------------------- pods


def test_a_pod_takes_every_ip_from_pod_ips_in_canonical_form() -> None:
    p = convert_pod({"podIP": "10.244.1.41",
                     "podIPs": [{"ip": "10.244.1.41"}, {"ip": "FD00:10:244:1:0:0:0:29"}]})
    assert p == Pod("default", "web-1", ("10.244.1.41", "fd00:10:244:1::29"))


@pytest.mark.parametrize("pod_ips", ["absent", None, []])
def test_a_pod_falls_back_to_pod_ip(pod_ips: Any) -> None:
    status: dict[str, Any] = {"podIP": "10.244.1.41"}
    if pod_ips != "absent":
        status["podIPs"] = pod_ips
    assert convert_pod(status).ips == ("10.244.1.41",)


@pytest.mark.parametrize("status", [None, {}, {"phase": "Pending", "podIP": ""}])
def test_a_pod_without_an_ip_is_fine(status: Any) -> None:
    assert convert_pod(status).ips == ()


def convert_pod_spec(spec: Any, phase: str = "Running") -> Pod:
    obj = convert("Pod", {**pod({"phase": phase, "podIP": "10.244.1.41"}), "spec": spec})
    assert isinstance(obj, Pod)
    return obj


@pytest.mark.parametrize("phase", ["Running", "Pending", "Succeeded", "Failed", "Unknown"])
def test_a_pod_keeps_its_phase_as_one_shared_string(phase: str) -> None:
    p = convert_pod({"phase": "".join(phase), "podIP": "10.244.1.41"})
    assert p.phase == phase and p.phase is sys.intern(phase)
    assert p.holds_ips is (phase not in ("Succeeded", "Failed"))


@pytest.mark.parametrize("spec", [None, {}, {"dnsPolicy": "ClusterFirst"},
                                  {"hostNetwork": False, "dnsConfig": {"searches": []}},
                                  {"dnsConfig": {"options": [{"name": "edns0"}],
                                                 "nameservers": ["1.1.1.1"]}}])
def test_a_running_pod_with_the_clusters_own_resolv_conf_may_be_autopathed(spec: Any) -> None:
    p = convert_pod_spec(spec)
    assert p.dns == "ClusterFirst" and p.autopath


@pytest.mark.parametrize(("spec", "dns"), [
    ({"hostNetwork": True}, "hostNetwork"),
    ({"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}, "hostNetwork"),
    ({"dnsPolicy": "Default"}, "dnsPolicy Default"),
    ({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.96.0.10"]}}, "dnsPolicy None"),
    ({"dnsPolicy": "ClusterFirstWithHostNet"}, "dnsPolicy ClusterFirstWithHostNet"),
    ({"dnsConfig": {"searches": ["corp.example"]}}, "dnsConfig searches"),
    ({"dnsConfig": {"options": [{"name": "ndots", "value": "2"}]}}, "dnsConfig ndots"),
])
def test_a_pod_whose_resolv_conf_is_not_the_clusters_own_says_why(spec: Any, dns: str) -> None:
    p = convert_pod_spec(spec)
    assert p.dns == dns and not p.autopath


@pytest.mark.parametrize("phase", ["Pending", "Succeeded", "Failed", "Unknown", ""])
def test_only_a_running_pod_may_be_autopathed(phase: str) -> None:
    p = convert_pod_spec({}, phase)
    assert p.dns == "ClusterFirst" and not p.autopath


# -------------------------------------------------------------------- malformed fields

MALFORMED: list[tuple[str, str, dict[str, Any], str, str]] = [
    # (id, kind, raw, field, message)
    ("metadata not a mapping", "Namespace", {"metadata": "x"},
     "metadata", 'expected a mapping, got "x"'),
    ("name absent", "Namespace", {"metadata": {}}, "metadata.name", "required"),
    ("name not a string", "Pod", {"metadata": {"name": 5}},
     "metadata.name", "expected a non-empty string, got 5"),
    ("name empty", "Pod", {"metadata": {"name": ""}},
     "metadata.name", 'expected a non-empty string, got ""'),
    ("namespace not a string", "Pod", {"metadata": {"name": "a", "namespace": ["x"]}},
     "metadata.namespace", "expected a string, got a list"),
    ("spec not a mapping", "Service", service(5), "spec", "expected a mapping, got 5"),
    ("type not a string", "Service", service({"type": 1}), "spec.type",
     "expected a string, got 1"),
    ("clusterIP not a string", "Service", service({"clusterIP": 10}), "spec.clusterIP",
     "expected a string, got 10"),
    ("clusterIP not an IP", "Service", service({"clusterIP": "10.0.0.999"}), "spec.clusterIP",
     '"10.0.0.999" is not an IP address'),
    ("clusterIPs not a list", "Service", service({"clusterIPs": "10.0.0.1"}),
     "spec.clusterIPs", 'expected a list, got "10.0.0.1"'),
    ("clusterIPs item not an IP", "Service", service({"clusterIPs": ["10.0.0.1", "x"]}),
     "spec.clusterIPs[1]", '"x" is not an IP address'),
    ("clusterIPs item not a string", "Service", service({"clusterIPs": [None]}),
     "spec.clusterIPs[0]", "required"),
    ("externalName absent", "Service", service({"type": "ExternalName"}),
     "spec.externalName", "required for an ExternalName service"),
    ("externalName not a string", "Service",
     service({"type": "ExternalName", "externalName": {"a": 1}}),
     "spec.externalName", "expected a string, got a mapping"),
    ("externalName empty", "Service", service({"type": "ExternalName", "externalName": "."}),
     "spec.externalName", '"." is not a valid DNS name (it is empty)'),
    ("externalName empty label", "Service",
     service({"type": "ExternalName", "externalName": "a..b"}),
     "spec.externalName", '"a..b" is not a valid DNS name (empty label)'),
    ("externalName long label", "Service",
     service({"type": "ExternalName", "externalName": "a" * 64 + ".com"}),
     "spec.externalName", "is not a valid DNS name (a label is longer than 63 characters)"),
    ("externalName too long", "Service",
     service({"type": "ExternalName", "externalName": ".".join(["a" * 63] * 4)}),
     "spec.externalName", "is not a valid DNS name (longer than 253 characters)"),
    ("ports not a list", "Service", service({"ports": "x"}), "spec.ports",
     'expected a list, got "x"'),
    ("port item not a mapping", "Service", service({"ports": [{"port": 80}, 80]}),
     "spec.ports[1]", "expected a mapping, got 80"),
    ("service port absent", "Service", service({"ports": [{"name": "http"}]}),
     "spec.ports[0].port", "required"),
    ("port out of range", "Service", service({"ports": [{"port": 65536}]}),
     "spec.ports[0].port", "65536 is not a port number (1-65535)"),
    ("port zero", "Service", service({"ports": [{"port": 0}]}),
     "spec.ports[0].port", "0 is not a port number (1-65535)"),
    ("port a string", "Service", service({"ports": [{"port": "80"}]}),
     "spec.ports[0].port", '"80" is not a port number (1-65535)'),
    ("port a boolean", "Service", service({"ports": [{"port": True}]}),
     "spec.ports[0].port", "true is not a port number (1-65535)"),
    ("protocol unknown", "Service", service({"ports": [{"port": 1, "protocol": "ICMP"}]}),
     "spec.ports[0].protocol", '"ICMP" is not TCP, UDP or SCTP'),
    ("port name not a string", "Service", service({"ports": [{"port": 1, "name": 7}]}),
     "spec.ports[0].name", "expected a string, got 7"),
    ("labels not a mapping", "EndpointSlice",
     {"metadata": {"name": "s", "labels": ["x"]}, "addressType": "IPv4"},
     "metadata.labels", "expected a mapping, got a list"),
    ("service-name label absent", "EndpointSlice",
     {"metadata": {"name": "s", "labels": {}}, "addressType": "IPv4"},
     'metadata.labels["kubernetes.io/service-name"]', "required"),
    ("service-name label not a string", "EndpointSlice",
     {"metadata": {"name": "s", "labels": {LABEL: 3}}, "addressType": "IPv4"},
     'metadata.labels["kubernetes.io/service-name"]', "expected a non-empty string, got 3"),
    ("addressType absent", "EndpointSlice", endpoint_slice(address_type=None),
     "addressType", "required"),
    ("addressType unknown", "EndpointSlice", endpoint_slice(address_type="IPv5"),
     "addressType", '"IPv5" is not IPv4, IPv6 or FQDN'),
    ("endpoints not a list", "EndpointSlice", endpoint_slice(endpoints={"a": 1}),
     "endpoints", "expected a list, got a mapping"),
    ("endpoint not a mapping", "EndpointSlice", endpoint_slice(endpoints=[{}, None]),
     "endpoints[1]", "expected a mapping, got null"),
    ("addresses not a list", "EndpointSlice", endpoint_slice(endpoints=[{"addresses": "x"}]),
     "endpoints[0].addresses", 'expected a list, got "x"'),
    ("address not an IP", "EndpointSlice",
     endpoint_slice(endpoints=[{"addresses": ["10.0.0.1"]}, {"addresses": ["1.2.3.4", "y"]}]),
     "endpoints[1].addresses[1]", '"y" is not an IP address'),
    ("address of the wrong family", "EndpointSlice",
     endpoint_slice(endpoints=[{"addresses": ["fd00::1"]}]),
     "endpoints[0].addresses[0]", '"fd00::1" is not an IPv4 address'),
    ("IPv4 address in an IPv6 slice", "EndpointSlice",
     endpoint_slice(endpoints=[{"addresses": ["10.0.0.1"]}], address_type="IPv6"),
     "endpoints[0].addresses[0]", '"10.0.0.1" is not an IPv6 address'),
    ("FQDN address not a string", "EndpointSlice",
     endpoint_slice(endpoints=[{"addresses": [1]}], address_type="FQDN"),
     "endpoints[0].addresses[0]", "expected a non-empty string, got 1"),
    ("conditions not a mapping", "EndpointSlice",
     endpoint_slice(endpoints=[{"addresses": [], "conditions": True}]),
     "endpoints[0].conditions", "expected a mapping, got true"),
    ("ready not a boolean", "EndpointSlice",
     endpoint_slice(endpoints=[{"conditions": {"ready": "yes"}}]),
     "endpoints[0].conditions.ready", 'expected true, false or null, got "yes"'),
    ("hostname not a string", "EndpointSlice", endpoint_slice(endpoints=[{"hostname": 1}]),
     "endpoints[0].hostname", "expected a string, got 1"),
    ("targetRef not a mapping", "EndpointSlice", endpoint_slice(endpoints=[{"targetRef": "p"}]),
     "endpoints[0].targetRef", 'expected a mapping, got "p"'),
    ("targetRef name not a string", "EndpointSlice",
     endpoint_slice(endpoints=[{"targetRef": {"kind": "Pod", "name": 1}}]),
     "endpoints[0].targetRef.name", "expected a string, got 1"),
    ("slice ports not a list", "EndpointSlice", endpoint_slice(ports="x"),
     "ports", 'expected a list, got "x"'),
    ("slice port out of range", "EndpointSlice", endpoint_slice(ports=[{"port": -1}]),
     "ports[0].port", "-1 is not a port number (1-65535)"),
    ("status not a mapping", "Pod", pod("Running"), "status", 'expected a mapping, got "Running"'),
    ("podIPs not a list", "Pod", pod({"podIPs": "10.0.0.1"}), "status.podIPs",
     'expected a list, got "10.0.0.1"'),
    ("podIPs item not a mapping", "Pod", pod({"podIPs": ["10.0.0.1"]}), "status.podIPs[0]",
     'expected a mapping, got "10.0.0.1"'),
    ("podIPs ip absent", "Pod", pod({"podIPs": [{"ip": "10.0.0.1"}, {}]}),
     "status.podIPs[1].ip", "required"),
    ("podIPs ip not an IP", "Pod", pod({"podIPs": [{"ip": "pod"}]}), "status.podIPs[0].ip",
     '"pod" is not an IP address'),
    ("podIP not an IP", "Pod", pod({"podIP": "10.0.0"}), "status.podIP",
     '"10.0.0" is not an IP address'),
    ("phase not a string", "Pod", pod({"phase": 1}), "status.phase", "expected a string, got 1"),
    ("hostNetwork not a bool", "Pod", {**pod({}), "spec": {"hostNetwork": "yes"}},
     "spec.hostNetwork", 'expected true or false, got "yes"'),
    ("dnsPolicy not a string", "Pod", {**pod({}), "spec": {"dnsPolicy": ["Default"]}},
     "spec.dnsPolicy", "expected a string, got a list"),
    ("dnsConfig searches not a list", "Pod",
     {**pod({}), "spec": {"dnsConfig": {"searches": "corp.example"}}},
     "spec.dnsConfig.searches", 'expected a list, got "corp.example"'),
    ("dnsConfig option not a mapping", "Pod",
     {**pod({}), "spec": {"dnsConfig": {"options": ["ndots:2"]}}},
     "spec.dnsConfig.options[0]", 'expected a mapping, got "ndots:2"'),
]


@pytest.mark.parametrize(("kind", "raw", "field", "message"),
                         [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_a_malformed_field_is_a_convert_error_naming_the_field(
        kind: str, raw: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConvertError) as info:
        convert(kind, raw)
    assert info.value.field == field
    assert message in info.value.message
    assert str(info.value) == f"{field}: {info.value.message}"


def test_a_long_value_is_shortened_in_the_message() -> None:
    with pytest.raises(ConvertError) as info:
        convert_service({"clusterIP": "x" * 500})
    assert len(str(info.value)) < 120


# ------------------------------------------------ wrong types anywhere: ConvertError only

SAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "Namespace": ("Namespace", {"metadata": {"name": "prod", "labels": {"a": "b"}}}),
    "ClusterIP": ("Service", service({
        "type": "ClusterIP", "clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1", "fd00::1"],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]})),
    "ExternalName": ("Service", service({"type": "ExternalName", "externalName": "a.b"})),
    "EndpointSlice": ("EndpointSlice", endpoint_slice(
        endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": True},
                    "hostname": "h", "targetRef": {"kind": "Pod", "name": "p"}}],
        ports=[{"name": "http", "port": 80, "protocol": "TCP"}])),
    "FQDN": ("EndpointSlice", endpoint_slice(endpoints=[{"addresses": ["a.b"]}],
                                             address_type="FQDN")),
    "Pod": ("Pod", pod({"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}]})),
}
WRONG_VALUES: list[Any] = [None, 5, -1, 2.5, True, "", "x", [], ["x"], [None], {}, {"x": 1},
                           b"bytes"]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*path, index))


def _replaced(raw: dict[str, Any], path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(raw)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = new
    return out


@pytest.mark.parametrize("sample_name", SAMPLES)
def test_a_wrong_type_anywhere_gives_a_convert_error_and_nothing_else(sample_name: str) -> None:
    kind, sample = SAMPLES[sample_name]
    convert(kind, sample)  # the sample itself is well-formed
    for path in _paths(sample):
        for wrong in WRONG_VALUES:
            try:
                convert(kind, _replaced(sample, path, wrong))
            except ConvertError:
                pass
            except Exception as exc:  # pragma: no cover - the failure report
                pytest.fail(f"{kind} with {path}={wrong!r} raised {exc!r}")


@settings(max_examples=3000, deadline=None)
@given(st.one_of(
    st.lists(st.integers(0, 999).map(str) | st.sampled_from(["00", "01", "007", "-1", ""]),
             min_size=1, max_size=6).map(".".join),
    st.ip_addresses().map(str),
    st.text(alphabet="0123456789.: \n\tabcdef", max_size=20),
))
def test_canonical_ip_accepts_and_spells_addresses_exactly_as_the_ipaddress_module(
        text: str) -> None:
    # names.canonical_ip takes a shortcut for plain dotted quads; it must not change a verdict.
    try:
        expected: str | None = str(ipaddress.ip_address(text.strip()))
    except ValueError:
        expected = None
    assert names.canonical_ip(text) == expected
