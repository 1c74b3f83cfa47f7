"""The file source reads ``kubectl get -o json`` dumps with the json module.

Why: a dump of a large cluster is tens of megabytes, and PyYAML needs seconds for what
``json`` reads in a fraction of one. These tests pin which files count as JSON, that JSON
goes through ``json`` (a key longer than YAML's 1024-character limit loads), and that a
JSON dump gives exactly the objects, warnings and errors its YAML twin gives.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterdns.objects import Cluster, Namespace
from clusterdns.source import dump as file_source
from clusterdns.source.dump import LoadResult, SourceError, load_files
from clusterdns.source.file import FileSource

NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}


def service(name: str, ip: str, namespace: str = "prod") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def endpoint_slice(service_name: str, addresses: list[str], ready: bool = True,
                   namespace: str = "prod") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}}
                          for a in addresses],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def kubectl_list(*items: Any) -> dict[str, Any]:
    """The shape ``kubectl get ns,svc,endpointslices -A -o json`` prints."""
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
            "items": list(items)}


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=4) + "\n", encoding="utf-8")
    return path


def same_result_with_path(result: LoadResult, old: Path, new: Path) -> LoadResult:
    """``result`` with every mention of ``old`` in its warnings replaced by ``new``."""
    warnings = tuple(w.replace(str(old), str(new)) for w in result.warnings)
    return LoadResult(result.cluster, warnings, result.ignored)


def test_a_kubectl_json_list_loads_namespaces_services_and_endpoint_slices(
        tmp_path: Path) -> None:
    dump = kubectl_list(NAMESPACE, service("web", "10.96.0.10"),
                        service("db", "None"), endpoint_slice("db", ["10.244.0.5", "10.244.0.6"]))
    result = load_files([write_json(tmp_path / "dump.json", dump)])
    cluster = result.cluster
    assert cluster.namespaces == (Namespace("prod"),)
    assert {(s.name, s.cluster_ips) for s in cluster.services} == {
        ("web", ("10.96.0.10",)), ("db", ())}
    assert len(cluster.endpoint_slices) == 1
    assert result.warnings == ()


def test_a_json_file_holding_a_single_object_loads_it(tmp_path: Path) -> None:
    result = load_files([write_json(tmp_path / "svc.json", service("web", "10.96.0.10"))])
    assert [(s.namespace, s.name) for s in result.cluster.services] == [("prod", "web")]
    assert result.warnings == ()


@pytest.mark.parametrize("name", ["dump.json", "dump.JSON", "dump", "dump.txt"])
def test_json_is_recognised_by_its_suffix_or_its_first_character(
        tmp_path: Path, name: str) -> None:
    # The key is longer than the 1024 characters YAML allows for a flow mapping key, so
    # this loads only if the file went through the json module.
    obj = {"kind": "Namespace",
           "metadata": {"name": "prod", "annotations": {"k" * 1100: "v"}}}
    path = tmp_path / name
    path.write_text("\n \t" + json.dumps(obj), encoding="utf-8")
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load(path.read_text(encoding="utf-8"))
    assert load_files([path]).cluster.namespaces == (Namespace("prod"),)


def test_a_top_level_json_array_is_one_document_per_element(tmp_path: Path) -> None:
    path = write_json(tmp_path / "dump.json",
                      [NAMESPACE, 5, kubectl_list(service("web", "10.96.0.10"))])
    result = load_files([path])
    assert result.cluster.namespaces == (Namespace("prod"),)
    assert [s.name for s in result.cluster.services] == ["web"]
    assert result.warnings == (f"{path}: document 2: expected a mapping, got 5",)


def test_a_json_dump_gives_the_same_objects_and_warnings_as_its_yaml_twin(
        tmp_path: Path) -> None:
    dump = kubectl_list(
        NAMESPACE,
        service("web", "10.96.0.10"),
        service("bad", "not-an-ip"),
        {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "prod"}},
        "a string",
        {"kind": "Pod", "metadata": {"name": "p", "namespace": "prod"},
         "status": {"podIP": "nope"}},
        endpoint_slice("web", ["10.244.0.5", "10.244.0.6"], ready=False),
    )
    json_path = write_json(tmp_path / "dump.json", dump)
    yaml_path = tmp_path / "dump.yaml"
    yaml_path.write_text(yaml.safe_dump(dump), encoding="utf-8")
    from_json = load_files([json_path])
    from_yaml = load_files([yaml_path])
    assert len(from_json.warnings) == 3
    assert from_json.warnings[0].startswith(f"{json_path}: document 1, item 3 (Service prod/bad): ")
    assert dict(from_json.ignored) == {"ConfigMap": 1}
    assert same_result_with_path(from_json, json_path, yaml_path) == from_yaml


def test_a_truncated_json_file_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    path.write_text('{"kind": "List",\n "items": [\n', encoding="utf-8")
    with pytest.raises(SourceError) as info:
        load_files([path])
    assert str(info.value) == f"{path}: not valid JSON at line 3, column 1: Expecting value"


def test_a_json_file_named_json_that_is_yaml_is_a_json_error(tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    path.write_text("kind: Namespace\nmetadata: {name: prod}\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"dump\.json: not valid JSON at line 1, column 1: "):
        load_files([path])


def test_a_yaml_file_that_starts_with_a_flow_mapping_is_still_read_as_yaml(
        tmp_path: Path) -> None:
    path = tmp_path / "dump.yaml"
    path.write_text("{kind: Namespace, metadata: {name: prod}}\n---\n"
                    "[5]\n", encoding="utf-8")
    result = load_files([path])
    assert result.cluster.namespaces == (Namespace("prod"),)
    assert result.warnings == (f"{path}: document 2: expected a mapping, got a list",)


def test_a_broken_file_that_looks_like_json_but_is_not_named_so_gets_the_yaml_error(
        tmp_path: Path) -> None:
    path = tmp_path / "dump"
    path.write_text('{"kind": "List",\n "items": [\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"^.*dump: not valid YAML at line 3, column 1: "):
        load_files([path])


def test_an_empty_or_blank_json_file_is_an_empty_cluster(tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    path.write_text(" \n\n", encoding="utf-8")
    assert load_files([path]) == LoadResult(Cluster(), (), {})


def test_a_json_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(NAMESPACE).encode())
    assert load_files([path]).cluster.namespaces == (Namespace("prod"),)


def test_a_json_nested_too_deeply_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(SourceError, match=r"dump\.json: not valid JSON: nested too deeply"):
        load_files([path])


def test_file_source_serves_a_json_dump_and_reloads_it_when_it_changes(
        tmp_path: Path) -> None:
    path = write_json(tmp_path / "dump.json", kubectl_list(NAMESPACE))
    source = FileSource([path], poll_interval=0.01, settle=0.05)
    assert source.load().namespaces == (Namespace("prod"),)
    write_json(path, kubectl_list(NAMESPACE, service("web", "10.96.0.10")))
    changes: list[None] = []

    async def watch() -> None:
        task = asyncio.create_task(source.run(lambda: changes.append(None)))
        try:
            for _ in range(500):
                if changes:
                    return
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(watch())
    assert changes
    assert [s.name for s in source.cluster().services] == ["web"]


# ----------------------------------------------- a List is read one item at a time


ITEM_POOL: list[Any] = [
    NAMESPACE, service("web", "10.96.0.10"), service("web", "10.96.0.11"),
    service("bad", "not-an-ip"), endpoint_slice("web", ["10.244.0.5"]),
    {"metadata": {"name": "kindless", "namespace": "prod"}, "spec": {"clusterIP": "None"}},
    {"kind": "", "metadata": {"name": "blank", "namespace": "prod"},
     "spec": {"clusterIP": "10.96.0.12"}},
    {"kind": "ConfigMap", "metadata": {"name": "c", "namespace": "prod"}},
    {"kind": 7, "metadata": {"name": "odd"}}, "a string", 5, None, [],
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(items=st.lists(st.sampled_from(range(len(ITEM_POOL))), max_size=8),
       kind=st.sampled_from(["List", "ServiceList", "NamespaceList", "Service", None, 3]),
       extra=st.dictionaries(st.sampled_from(["metadata", "apiVersion", "zz", "aa"]),
                             st.sampled_from([{}, "v1", [1, {"kind": "x"}], None,
                                              1234567890123, -2.5e-300, True])),
       indent=st.sampled_from([None, 0, 2]), items_first=st.booleans(),
       chunk=st.sampled_from([1, 2, 7, 64, 1 << 20]))
def test_a_json_list_read_item_by_item_equals_its_yaml_twin(
        tmp_path: Path, items: list[int], kind: Any, extra: dict[str, Any],
        indent: int | None, items_first: bool, chunk: int) -> None:
    doc: dict[str, Any] = {"items": [ITEM_POOL[i] for i in items]} if items_first else {}
    doc.update(extra)
    if kind is not None:
        doc["kind"] = kind
    doc.setdefault("items", [ITEM_POOL[i] for i in items])
    json_path = tmp_path / "dump.json"
    json_path.write_text(json.dumps(doc, indent=indent), encoding="utf-8")
    yaml_path = tmp_path / "dump.yaml"
    yaml_path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    # the file is read in chunks of this many characters; any boundary must do
    default, file_source._JsonChunks.CHUNK = file_source._JsonChunks.CHUNK, chunk
    try:
        from_json = load_files([json_path])
    finally:
        file_source._JsonChunks.CHUNK = default
    assert same_result_with_path(from_json, json_path, yaml_path) == load_files([yaml_path])


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
@pytest.mark.parametrize("text", [
    '{"kind": "List", "items": [{"kind": "Namespace", "metadata": {"name": "a"}},]}',
    '{"kind": "List", "items": [],}',
    '{"kind": "List", "items": []} {}',
    '{"kind": "List", "items": [{"kind": "Namespace", "metadata": {"name": "a"}} 1]}',
    '{"kind": "List", "items": [{"kind": "Namespace"}], "metadata" {}}',
    '\u000b{"kind": "List", "items": []}',
    '{"kind": "List", "items": [], "n": 12',
    '{"kind": "List", "items": [], "n": 12}x',
    '{"kind": "List", "items": [{"kind": "Namespace", "metadata": {"name": "a"',
])
def test_json_that_is_almost_a_list_fails_as_json_loads_would(
        tmp_path: Path, text: str, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_source._JsonChunks, "CHUNK", chunk)
    path = tmp_path / "dump.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(SourceError) as info:
        load_files([path])
    exc = expected.value
    assert str(info.value) == (f"{path}: not valid JSON at line {exc.lineno}, "
                               f"column {exc.colno}: {exc.msg}")


def test_a_json_list_with_items_twice_takes_the_last_as_json_loads_does(
        tmp_path: Path) -> None:
    path = tmp_path / "dump.json"
    path.write_text('{"kind": "List", "items": [{"kind": "Namespace", "metadata": '
                    '{"name": "first"}}], "items": [{"kind": "Namespace", "metadata": '
                    '{"name": "second"}}]}', encoding="utf-8")
    assert load_files([path]).cluster.namespaces == (Namespace("second"),)


def test_a_large_json_list_is_never_held_whole_as_text_or_as_raw_dicts(tmp_path: Path) -> None:
    # 2,000 slices of 20 endpoints (10 MB of JSON): the chunked, item-by-item read
    # must peak far below what merely reading the file whole costs.
    dump = kubectl_list(*(endpoint_slice(f"s{i}", [f"10.{i // 200}.{i % 200}.{j}"
                                                   for j in range(20)])
                          for i in range(2000)))
    path = write_json(tmp_path / "dump.json", dump)
    del dump
    tracemalloc.start()
    try:
        path.read_text(encoding="utf-8")  # bytes and text, briefly both
        reading = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        json.loads(path.read_text(encoding="utf-8"))  # the text, then every raw dict
        whole = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        result = load_files([path])
        streamed = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(result.cluster.endpoint_slices) == 2000
    # reading the file whole takes its bytes and its text (~20 MB), json.loads another
    # ~14 MB of raw dicts; item by item from 1 MB chunks, only the ~4 MB of slim objects
    assert whole > reading
    assert streamed < reading / 2, (reading, whole, streamed)
