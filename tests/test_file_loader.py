"""The file source's loader children (``clusterdns.source.loader``), for real.

A reload is parsed in a child interpreter that streams the objects back; the child is
started ahead of time, stays for the next load when every file was a YAML List it read
through its item cache (so a rewrite costs only its changed items), and exits after
anything else. These tests run real children: what comes back equals an in-process
load, frames stay small, a kept child serves the next load, and one that died meanwhile
is replaced without the load failing.
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
from pathlib import Path

import pytest
import yaml

from clusterdns.source import loader
from clusterdns.source.dump import SourceError, load_files
from clusterdns.source.loader import Loader
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER


def yaml_list(path: Path) -> Path:
    objects = [d for p in (DEMO_CLUSTER, EXTRA_CLUSTER)
               for d in yaml.safe_load_all(p.read_text()) if d]
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "items": objects, "kind": "List",
                                    "metadata": {}}, default_flow_style=False))
    return path


def json_list(path: Path) -> Path:
    objects = [d for d in yaml.safe_load_all(DEMO_CLUSTER.read_text()) if d]
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    return path


async def child_pid(source: Loader) -> int:
    assert source._child is not None
    return (await source._child).process.pid


async def test_a_load_in_a_child_gives_what_loading_in_process_gives(tmp_path: Path) -> None:
    path = yaml_list(tmp_path / "dump.yaml")
    expected = load_files([path])
    source = Loader()
    try:
        objects, result = await source.load([path])
    finally:
        await source.close()
    c = expected.cluster
    assert objects == [*c.namespaces, *c.services, *c.endpoint_slices, *c.pods]
    assert (result.warnings, dict(result.ignored)) == (expected.warnings,
                                                        dict(expected.ignored))


async def test_a_child_that_read_yaml_lists_stays_for_the_next_load_and_json_ends_it(
        tmp_path: Path) -> None:
    yaml_path, json_path = yaml_list(tmp_path / "a.yaml"), json_list(tmp_path / "b.json")
    source = Loader()
    try:
        await source.load([yaml_path])
        kept = await child_pid(source)
        await source.load([yaml_path])
        assert await child_pid(source) == kept
        await source.load([json_path])
        assert await child_pid(source) != kept  # a fresh child waits for the next load
    finally:
        await source.close()


async def test_a_kept_child_that_died_is_replaced_and_the_load_succeeds(tmp_path: Path) -> None:
    path = yaml_list(tmp_path / "dump.yaml")
    source = Loader()
    try:
        await source.load([path])
        os.kill(await child_pid(source), signal.SIGKILL)
        objects, _ = await source.load([path])
        assert objects
    finally:
        await source.close()


async def test_an_unreadable_file_is_a_source_error_naming_it(tmp_path: Path) -> None:
    source = Loader()
    try:
        with pytest.raises(SourceError, match=r"missing\.yaml: cannot read"):
            await source.load([tmp_path / "missing.yaml"])
    finally:
        await source.close()


def test_frames_stay_near_the_frame_size_however_large_the_objects(tmp_path: Path) -> None:
    big = tmp_path / "big.json"  # one service with 1,000 slices of 100 endpoints
    big.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
         "metadata": {"name": f"s{n}", "namespace": "default",
                      "labels": {"kubernetes.io/service-name": "big"}},
         "endpoints": [{"addresses": [f"10.{n // 256}.{n % 256}.{i}"]} for i in range(100)]}
        for n in range(1000)]}))
    out = io.BytesIO()
    loader.child([str(big)], out)
    data = out.getvalue()
    sizes = []
    while data:
        (size,) = struct.unpack("!I", data[:4])
        sizes.append(size)
        data = data[4 + size:]
    assert max(sizes) < 2 * loader.FRAME_BYTES
