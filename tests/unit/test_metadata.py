"""Container metadata from Docker's files: fields, dedot, Kubernetes, env allow-list, refresh."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from shipper.model import LogFile, RecordGroup
from shipper.processing.metadata import (
    MetadataCache,
    MetadataOptions,
    Selection,
    build_enrichment,
    container_facts,
    own_container_id,
)
from shipper.sinks.ecs import encode_plain, encode_spliced

CID = "a" * 64
OPTIONS = MetadataOptions(host_name="node-1", env_allowlist=("LOG_LEVEL",))


def config(**overrides: object) -> dict:
    document = {
        "ID": CID,
        "Name": "/web-1",
        "Created": "2024-05-01T12:00:00.1Z",
        "State": {"Running": True, "StartedAt": "2024-05-01T12:00:01.2Z"},
        "Config": {
            "Image": "nginx:1.25",
            "Env": ["PATH=/usr/bin", "DB_PASSWORD=hunter2", "LOG_LEVEL=debug"],
            "Labels": {
                "app": "web",
                "app.kubernetes.io/name": "shop",
                "io.kubernetes.pod.name": "shop-7d9",
                "io.kubernetes.pod.namespace": "prod",
                "io.kubernetes.pod.uid": "1234-5678",
                "io.kubernetes.container.name": "nginx",
                "com.docker.compose.project": "shopstack",
                "com.docker.compose.service": "web",
            },
        },
    }
    document.update(overrides)
    return document


def test_ecs_fields_from_config_v2() -> None:
    document = build_enrichment(CID, config(), OPTIONS).document
    container = document["container"]
    assert container["id"] == CID
    assert container["name"] == "web-1"  # no leading slash
    assert container["image"] == {"name": "nginx:1.25"}
    assert document["kubernetes"] == {
        "pod": {"name": "shop-7d9", "uid": "1234-5678"},
        "namespace": "prod",
        "container": {"name": "nginx"},
    }
    assert document["docker"]["compose"] == {"project": "shopstack", "service": "web"}
    assert document["docker"]["container"]["created"] == "2024-05-01T12:00:00.1Z"
    assert document["docker"]["container"]["started"] == "2024-05-01T12:00:01.2Z"
    assert document["host"] == {"name": "node-1"}
    assert document["agent"]["type"] == "shipper"
    assert document["ecs"]["version"]


def test_a_container_not_started_yet_has_no_start_time() -> None:
    # Docker writes config.v2.json at create with Go's zero time; the first lines of a
    # starting container can be read before it rewrites the file.
    created = config(State={"Running": False, "StartedAt": "0001-01-01T00:00:00Z"})
    document = build_enrichment(CID, created, OPTIONS).document
    assert "started" not in document["docker"]["container"]
    assert document["docker"]["container"]["created"] == "2024-05-01T12:00:00.1Z"


def test_dotted_label_keys_cannot_clash_in_a_mapping() -> None:
    labels = build_enrichment(CID, config(), OPTIONS).document["container"]["labels"]
    assert labels["app"] == "web"
    assert labels["app_kubernetes_io/name"] == "shop"
    assert not any("." in key for key in labels)
    kept = build_enrichment(CID, config(), MetadataOptions(host_name="n", dedot_labels=False))
    assert kept.document["container"]["labels"]["app.kubernetes.io/name"] == "shop"


def test_env_is_shipped_only_when_allow_listed() -> None:
    enrichment = build_enrichment(CID, config(), OPTIONS)
    assert enrichment.document["docker"]["container"]["env"] == {"LOG_LEVEL": "debug"}
    assert b"hunter2" not in enrichment.fragment
    none = build_enrichment(CID, config(), MetadataOptions(host_name="n"))
    assert "env" not in none.document["docker"]["container"]
    assert b"hunter2" not in none.fragment


def test_fragment_is_the_document_serialised_once() -> None:
    enrichment = build_enrichment(CID, config(), OPTIONS)
    assert orjson.loads(b"{" + enrichment.fragment + b"}") == enrichment.document


def test_unknown_metadata_still_gives_the_container_id() -> None:
    document = build_enrichment(CID, None, OPTIONS).document
    assert document["container"] == {"id": CID}
    assert document["host"] == {"name": "node-1"}


def test_records_carry_the_enrichment_spliced_and_plain_alike() -> None:
    group = RecordGroup(
        file=LogFile(source="docker", container_id=CID, path="/x/y-json.log", handle="h"),
        start=0,
        end=30,
        timestamps=["2024-05-01T12:00:00.000000001Z"] * 3,
        messages=["one", "two", "three"],
        streams=["stdout", "stderr", "stdout"],
        offsets=[0, 10, 20],
        attrs={2: {"tag": "web"}},
        enrichment=build_enrichment(CID, config(), OPTIONS),
    )
    spliced = encode_spliced(group, range(3))
    assert spliced == encode_plain(group, range(3))
    documents = [orjson.loads(line) for line in spliced.splitlines()]
    assert all(d["container"]["name"] == "web-1" for d in documents)
    assert documents[2]["docker"]["attrs"] == {"tag": "web"}  # merged with docker.compose
    assert documents[2]["docker"]["compose"]["service"] == "web"


def write_config(directory: Path, document: dict) -> None:
    temporary = directory / ".config.v2.json.tmp"  # Docker writes a temp file, then renames
    temporary.write_bytes(orjson.dumps(document))
    os.replace(temporary, directory / "config.v2.json")


def test_cache_reads_once_and_again_after_docker_replaces_the_file(tmp_path: Path) -> None:
    errors: list[tuple[str, str]] = []
    cache = MetadataCache(OPTIONS, lambda cid, reason: errors.append((cid, reason)))
    write_config(tmp_path, config())
    first = cache.get(str(tmp_path), CID)
    assert cache.get(str(tmp_path), CID) is first  # cached: no second read
    write_config(tmp_path, config(Name="/web-renamed"))
    assert cache.get(str(tmp_path), CID).document["container"]["name"] == "web-renamed"
    assert errors == []


def test_missing_or_corrupt_metadata_is_counted_once_and_never_blocks(tmp_path: Path) -> None:
    errors: list[tuple[str, str]] = []
    cache = MetadataCache(OPTIONS, lambda cid, reason: errors.append((cid, reason)))
    assert cache.get(str(tmp_path), CID).document["container"] == {"id": CID}
    assert cache.get(str(tmp_path), CID).document["container"] == {"id": CID}
    assert len(errors) == 1 and "missing" in errors[0][1]
    (tmp_path / "config.v2.json").write_bytes(b'{"Name": "/half')
    assert cache.get(str(tmp_path), CID).document["container"] == {"id": CID}
    assert len(errors) == 2 and "not valid JSON" in errors[1][1]


def test_own_container_is_found_from_the_mounts_docker_makes(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "100 90 0:50 / / rw - overlay overlay rw\n"
        f"101 90 254:0 /var/lib/docker/containers/{CID}/hostname /etc/hostname rw - ext4 rw\n"
    )
    assert own_container_id(str(mountinfo)) == CID
    mountinfo.write_text("100 90 0:50 / / rw - ext4 /dev/root rw\n")
    assert own_container_id(str(mountinfo)) is None


def selection(include: tuple | None = None, exclude: tuple = ((), (), ())) -> Selection:
    return Selection(include=include, exclude=exclude, opt_out_label="shipper.exclude")


def test_selection_by_name_image_and_label_globs() -> None:
    web = container_facts(config())
    assert selection().ships(web)
    assert selection(include=(("web-*",), (), ())).ships(web)
    assert not selection(include=(("db-*",), (), ())).ships(web)
    assert selection(include=((), ("nginx:*",), ())).ships(web)
    assert selection(include=((), (), ("app=w*",))).ships(web)
    assert selection(include=((), (), ("io.kubernetes.pod.name",))).ships(web)
    assert not selection(include=((), (), ("app=db",))).ships(web)
    assert not selection(exclude=((), ("nginx:1.2?",), ())).ships(web)
    assert not selection(exclude=((), (), ("com.docker.compose.service=web",))).ships(web)


def test_a_container_opts_out_with_its_label_and_unknown_metadata_ships() -> None:
    opted = config()
    opted["Config"]["Labels"]["shipper.exclude"] = "true"
    assert not selection().ships(container_facts(opted))
    assert selection().ships(None)  # a file that cannot be read must not drop lines
