"""The Elasticsearch test server, driven by the official client (8.19, `compatible-with=8`)."""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import elasticsearch
import httpx
import pytest
from elasticsearch import AsyncElasticsearch

from tests.fake_elasticsearch import FakeElasticsearch, filter_path

TODAY = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)


@pytest.fixture
def es() -> Iterator[FakeElasticsearch]:
    with FakeElasticsearch(clock=lambda: TODAY) as server:
        yield server
        assert server.internal_errors == []


HTTPX_NODE: Any = "httpxasync"  # the client's annotations want a class; it takes the name too


def connect(url: str, **options: Any) -> AsyncElasticsearch:
    return AsyncElasticsearch(hosts=[url], node_class=HTTPX_NODE, max_retries=0, **options)


@pytest.fixture
async def client(es: FakeElasticsearch) -> AsyncIterator[AsyncElasticsearch]:
    async with connect(es.url) as client:
        yield client


def doc(**fields: Any) -> dict[str, Any]:
    return {"@timestamp": "2025-03-14T09:26:53.123456789Z", "message": "hello", **fields}


def statuses(response: Any) -> list[int]:
    return [next(iter(item.values()))["status"] for item in response["items"]]


# --- the basics ---------------------------------------------------------------------------------


async def test_info_is_accepted_by_the_official_client(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    info = await client.info()

    assert info["version"]["number"] == "8.19.2"
    assert info["tagline"] == "You Know, for Search"
    assert info.meta.headers["x-elastic-product"] == "Elasticsearch"
    assert (
        info.meta.headers["content-type"] == "application/vnd.elasticsearch+json;compatible-with=8"
    )
    assert (
        es.requests[0].headers["accept"] == "application/vnd.elasticsearch+json; compatible-with=8"
    )


async def test_nine_x_mode_answers_as_nine_and_accepts_the_8_client() -> None:
    with FakeElasticsearch(version="9.1.3") as server:
        async with connect(server.url) as client:
            info = await client.info()
    assert info["version"]["number"] == "9.1.3"
    assert info["version"]["minimum_wire_compatibility_version"] == "8.19.0"


async def test_eight_x_refuses_compatible_with_9_as_a_real_8_does(es: FakeElasticsearch) -> None:
    headers = {
        "accept": "application/vnd.elasticsearch+json; compatible-with=9",
        "content-type": "application/vnd.elasticsearch+x-ndjson; compatible-with=9",
    }
    body = b'{"create":{"_index":"app","_id":"1"}}\n{"a":1}\n'
    async with httpx.AsyncClient(base_url=es.url) as http:
        response = await http.post("/_bulk", content=body, headers=headers)

    assert response.status_code == 400
    assert response.headers["x-elastic-product"] == "Elasticsearch"
    error = response.json()["error"]
    assert error["type"] == "media_type_header_exception"
    assert error["reason"] == "Invalid media-type value on headers [Accept, Content-Type]"
    assert error["caused_by"] == {
        "type": "status_exception",
        "reason": "Accept version must be either version 8 or 7, but found 9. "
        "Accept=application/vnd.elasticsearch+json; compatible-with=9",
    }
    assert es.documents() == []


async def test_nine_x_accepts_both_compatible_with_8_and_9() -> None:
    with FakeElasticsearch(version="9.1.3") as server:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for version in (8, 9):
                accept = f"application/vnd.elasticsearch+json; compatible-with={version}"
                response = await http.get("/", headers={"accept": accept})
                assert response.status_code == 200
                assert response.headers["content-type"].endswith(f"compatible-with={version}")
            old = await http.get("/", headers={"accept": accept.replace("=9", "=7")})
    assert old.status_code == 400
    assert "must be either version 9 or 8, but found 7" in old.text


# --- bulk ---------------------------------------------------------------------------------------


async def test_create_then_replay_is_a_409_per_item(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    operations: list[Any] = []
    for n in range(3):
        operations += [{"create": {"_index": "app", "_id": f"id-{n}"}}, doc(n=n)]

    first = await client.bulk(operations=operations)
    replay = await client.bulk(operations=operations)

    assert first["errors"] is False
    assert statuses(first) == [201, 201, 201]
    assert first["items"][0]["create"] | {"_shards": None} == {
        "_index": "app", "_id": "id-0", "_version": 1, "result": "created",
        "_shards": None, "_seq_no": 0, "_primary_term": 1, "status": 201,
    }  # fmt: skip
    assert replay["errors"] is True
    assert statuses(replay) == [409, 409, 409]
    error = replay["items"][1]["create"]["error"]
    assert error["type"] == "version_conflict_engine_exception"
    assert (
        error["reason"] == "[id-1]: version conflict, document already exists (current version [1])"
    )
    assert [d.source["n"] for d in es.documents("app")] == [0, 1, 2]
    assert es.item_results == {"created": 3, "version_conflict_engine_exception": 3}


async def test_index_auto_generates_ids_and_overwrites_by_id(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    response = await client.bulk(
        operations=[{"index": {"_index": "app"}}, {"a": 1},
                    {"index": {"_index": "app", "_id": "x"}}, {"a": 2},
                    {"index": {"_index": "app", "_id": "x"}}, {"a": 3}]
    )  # fmt: skip

    generated = response["items"][0]["index"]["_id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{20}", generated)
    assert statuses(response) == [201, 201, 200]
    assert response["items"][2]["index"]["result"] == "updated"
    assert response["items"][2]["index"]["_version"] == 2
    stored = es.document("app", "x")
    assert stored is not None and stored.source == {"a": 3}


async def test_a_body_without_the_final_newline_is_refused(es: FakeElasticsearch) -> None:
    async with httpx.AsyncClient(base_url=es.url) as http:
        response = await http.post(
            "/_bulk",
            content=b'{"create":{"_index":"app"}}\n{"a":1}',
            headers={"content-type": "application/x-ndjson"},
        )
    assert response.status_code == 400
    assert (
        response.json()["error"]["reason"]
        == "The bulk request must be terminated by a newline [\\n]"
    )


async def test_documents_must_be_objects_and_fit_the_mapping() -> None:
    with FakeElasticsearch(mapping={"@timestamp": "date_nanos"}) as server:
        async with connect(server.url) as strict:
            response = await strict.bulk(
                operations=[{"create": {"_index": "app", "_id": "a"}}, ["not", "an", "object"],  # type: ignore[list-item]
                            {"create": {"_index": "app", "_id": "b"}}, {"@timestamp": "yesterday"},
                            {"create": {"_index": "app", "_id": "c"}}, doc()]
            )  # fmt: skip
    assert statuses(response) == [400, 400, 201]
    not_object = response["items"][0]["create"]["error"]
    assert not_object["type"] == "document_parsing_exception"
    bad_date = response["items"][1]["create"]["error"]
    assert bad_date["type"] == "document_parsing_exception"
    assert bad_date["reason"].endswith(
        "failed to parse field [@timestamp] of type [date_nanos] in document with id 'b'. "
        "Preview of field's value: 'yesterday'"
    )
    assert bad_date["caused_by"]["type"] == "illegal_argument_exception"


async def test_dynamic_mapping_conflicts_fail_the_later_document(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    response = await client.bulk(
        operations=[{"create": {"_index": "app"}}, {"status": 200},
                    {"create": {"_index": "app"}}, {"status": "ok"}]
    )  # fmt: skip
    assert statuses(response) == [201, 400]
    assert "of type [long]" in response["items"][1]["create"]["error"]["reason"]


async def test_pipeline_is_recorded_per_document_and_must_exist(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    await client.ingest.put_pipeline(id="parse", processors=[])
    response = await client.bulk(
        pipeline="parse",
        operations=[{"create": {"_index": "app", "_id": "1"}}, {"a": 1},
                    {"create": {"_index": "app", "_id": "2", "pipeline": "nope"}}, {"a": 2}],
    )  # fmt: skip
    assert statuses(response) == [201, 400]
    assert (
        response["items"][1]["create"]["error"]["reason"]
        == "pipeline with id [nope] does not exist"
    )
    stored = es.document("app", "1")
    assert stored is not None and stored.pipeline == "parse"


async def test_unknown_parameters_are_refused(client: AsyncElasticsearch) -> None:
    with pytest.raises(elasticsearch.BadRequestError) as refused:
        await client.perform_request("GET", "/", params={"bogus": "1"})
    assert (
        refused.value.body["error"]["reason"]
        == "request [/] contains unrecognized parameter: [bogus]"
    )


# --- data streams -------------------------------------------------------------------------------


async def test_data_streams_accept_only_create_and_answer_with_the_backing_index(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    response = await client.bulk(
        operations=[{"create": {"_index": "logs-app-default", "_id": "1"}}, doc(),
                    {"index": {"_index": "logs-app-default", "_id": "2"}}, doc(),
                    {"create": {"_index": "logs-app-default", "_id": "3"}}, {"message": "no time"}]
    )  # fmt: skip

    assert statuses(response) == [201, 400, 400]
    assert response["items"][0]["create"]["_index"] == ".ds-logs-app-default-2025.03.14-000001"
    assert response["items"][1]["index"]["error"] == {
        "type": "illegal_argument_exception",
        "reason": "only write ops with an op_type of create are allowed in data streams",
    }
    missing = response["items"][2]["create"]["error"]
    assert missing["type"] == "document_parsing_exception"
    assert missing["caused_by"]["reason"] == "data stream timestamp field [@timestamp] is missing"
    assert [d.id for d in es.documents("logs-app-default")] == ["1"]
    streams = await client.indices.get_data_stream(name="logs-app-default")
    assert streams["data_streams"][0]["indices"][0]["index_name"].startswith(
        ".ds-logs-app-default-"
    )


async def test_after_a_rollover_the_same_id_is_created_again(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    operations: list[Any] = [{"create": {"_index": "logs-app-default", "_id": "same"}}, doc()]
    await client.bulk(operations=operations)
    assert statuses(await client.bulk(operations=operations)) == [409]

    es.rollover("logs-app-default")
    again = await client.bulk(operations=operations)

    assert statuses(again) == [201]
    assert again["items"][0]["create"]["_index"] == ".ds-logs-app-default-2025.03.14-000002"
    assert [d.id for d in es.documents("logs-app-default")] == ["same", "same"]


async def test_templates_policies_and_data_stream_apis(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    await client.ilm.put_lifecycle(name="shipper", policy={"phases": {"hot": {"actions": {}}}})
    await client.indices.put_index_template(
        name="shipper", index_patterns=["shipper-*"], data_stream={}, priority=200,
        template={"mappings": {"properties": {"@timestamp": {"type": "date_nanos"}}},
                  "settings": {"index.lifecycle.name": "shipper"}},
    )  # fmt: skip
    await client.indices.create_data_stream(name="shipper-web")
    await client.indices.put_data_lifecycle(name="shipper-web", data_retention="7d")

    template = await client.indices.get_index_template(name="shipper")
    stream = (await client.indices.get_data_stream(name="shipper-web"))["data_streams"][0]
    policy = await client.ilm.get_lifecycle(name="shipper")
    health = await client.cluster.health()
    with pytest.raises(elasticsearch.NotFoundError):
        await client.indices.get_index_template(name="missing")

    assert template["index_templates"][0]["index_template"]["priority"] == 200
    assert stream["template"] == "shipper"
    assert stream["ilm_policy"] == "shipper"
    assert stream["lifecycle"] == {"enabled": True, "data_retention": "7d"}
    assert policy["shipper"]["policy"] == {"phases": {"hot": {"actions": {}}}}
    assert health["status"] == "green"
    assert es.indices[stream["indices"][0]["index_name"]].mappings["@timestamp"] == "date_nanos"


async def test_auto_create_off_is_a_404_per_item_unless_a_template_allows_it(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    es.auto_create_index = False
    response = await client.bulk(
        operations=[{"create": {"_index": "app"}}, {"a": 1},
                    {"create": {"_index": "logs-app-default"}}, doc()]
    )  # fmt: skip
    assert statuses(response) == [404, 201]
    error = response["items"][0]["create"]["error"]
    assert error["type"] == "index_not_found_exception"
    assert error["reason"] == "no such index [app] and [action.auto_create_index] is [false]"


# --- scripted failures --------------------------------------------------------------------------


async def test_scripted_item_failures(es: FakeElasticsearch, client: AsyncElasticsearch) -> None:
    es.fail_items(1)  # the next item: 429 es_rejected_execution_exception
    es.fail_items(lambda item: item.id == "c", status=429, error_type="cluster_block_exception")
    es.fail_items(lambda item: item.id == "d", status=500)
    operations: list[Any] = []
    for name in "abcde":
        operations += [{"create": {"_index": "app", "_id": name}}, {"n": name}]

    response = await client.bulk(operations=operations)

    assert response["errors"] is True
    assert statuses(response) == [429, 201, 429, 500, 201]
    items = [item["create"] for item in response["items"]]
    assert items[0]["error"]["type"] == "es_rejected_execution_exception"
    assert items[2]["error"]["reason"] == (
        "index [app] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage "
        "watermark, index has read-only-allow-delete block];"
    )
    assert [d.id for d in es.documents("app")] == ["b", "e"]
    assert [item.error_type for item in es.items()] == [
        "es_rejected_execution_exception", None, "cluster_block_exception",
        "illegal_state_exception", None,
    ]  # fmt: skip
    retry = await client.bulk(operations=operations[:2])  # the rule was used up
    assert statuses(retry) == [201]


async def test_whole_request_failures_carry_retry_after(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    es.fail_requests(1, status=503, retry_after=1)
    es.fail_requests(1, status=429, retry_after=2, proxy=True)
    operations: list[Any] = [{"create": {"_index": "app", "_id": "1"}}, {"a": 1}]

    with pytest.raises(elasticsearch.ApiError) as unavailable:
        await client.bulk(operations=operations)
    with pytest.raises(elasticsearch.ApiError) as throttled:
        await client.bulk(operations=operations)
    accepted = await client.bulk(operations=operations)

    assert unavailable.value.meta.status == 503
    assert unavailable.value.meta.headers["retry-after"] == "1"
    assert unavailable.value.body["error"]["type"] == "cluster_block_exception"
    assert throttled.value.meta.status == 429
    assert throttled.value.meta.headers["retry-after"] == "2"
    assert "x-elastic-product" not in throttled.value.meta.headers  # a proxy answered
    assert statuses(accepted) == [201]
    assert [r.status for r in es.bulk_requests()] == [503, 429, 200]


async def test_413_above_max_content_length_keeps_the_connection(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    es.max_content_length = 1000
    big: list[Any] = [{"create": {"_index": "app"}}, {"message": "x" * 2000}]

    with pytest.raises(elasticsearch.ApiError) as too_large:
        await client.bulk(operations=big)
    after = await client.bulk(operations=[{"create": {"_index": "app"}}, {"a": 1}])

    assert too_large.value.meta.status == 413
    assert too_large.value.meta.headers["content-length"] == "0"
    assert statuses(after) == [201]
    assert es.bulk_requests()[0].status == 413
    assert es.bulk_requests()[0].body == b""  # refused on the declared length, never read


async def test_gzip_bodies_are_decoded_and_the_limit_counts_decompressed_bytes(
    es: FakeElasticsearch,
) -> None:
    operations: list[Any] = [{"create": {"_index": "app", "_id": "1"}}, {"message": "y" * 5000}]
    async with connect(es.url, http_compress=True) as client:
        response = await client.bulk(operations=operations)
        es.max_content_length = 4000  # below the decompressed size, above the wire size
        with pytest.raises(elasticsearch.ApiError) as too_large:
            await client.bulk(operations=operations)

    request = es.bulk_requests()[0]
    assert statuses(response) == [201]
    assert request.compressed and request.content_encoding == "gzip"
    assert request.wire_size < 1000 < request.body_size
    assert too_large.value.meta.status == 413
    assert es.bulk_requests()[1].wire_size < es.max_content_length


async def test_dropped_connections(es: FakeElasticsearch, client: AsyncElasticsearch) -> None:
    operations: list[Any] = [{"create": {"_index": "app", "_id": "1"}}, {"a": 1}]
    es.drop_next(1)
    with pytest.raises(elasticsearch.ConnectionError):
        await client.bulk(operations=operations)
    assert es.documents() == []

    es.drop_next(1, after_processing=True, reset=True)  # indexed, but the answer is lost
    with pytest.raises(elasticsearch.ConnectionError):
        await client.bulk(operations=operations)
    replay = await client.bulk(operations=operations)

    assert statuses(replay) == [409]
    assert [d.id for d in es.documents()] == ["1"]
    assert [r.dropped for r in es.bulk_requests()] == [True, True, False]


async def test_slow_answers_time_out_in_the_client(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    es.slow_next(1, 5.0)
    with pytest.raises(elasticsearch.ConnectionTimeout):
        await client.options(request_timeout=0.2).info()
    assert (await client.info())["cluster_name"] == "docker-cluster"


async def test_down_refuses_connections_then_comes_back_with_its_data(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    await client.bulk(operations=[{"create": {"_index": "app", "_id": "1"}}, {"a": 1}])
    port = es.port
    with es.down(), pytest.raises(elasticsearch.ConnectionError):
        await client.info()
    assert es.port == port
    assert (await client.count(index="app"))["count"] == 1


# --- filter_path --------------------------------------------------------------------------------


async def test_filter_path_keeps_positions_when_every_item_keeps_a_field(
    es: FakeElasticsearch, client: AsyncElasticsearch
) -> None:
    es.fail_items(lambda item: item.id == "b", status=429)
    operations: list[Any] = []
    for name in "abc":
        operations += [{"create": {"_index": "app", "_id": name}}, {"n": name}]

    kept = await client.bulk(
        operations=operations, filter_path="errors,items.*.status,items.*.error,items.*._id"
    )
    # Replayed: "a" and "c" are 409s, "b" (429 the first time) is created now.
    errors_only = await client.bulk(operations=operations, filter_path="items.*.error")
    fresh: list[Any] = [{"create": {"_index": "app", "_id": "d"}}, {"n": "d"}]
    none_failed = await client.bulk(operations=fresh, filter_path="items.*.error")

    assert kept["errors"] is True
    assert [item["create"]["_id"] for item in kept["items"]] == ["a", "b", "c"]
    assert statuses(kept) == [201, 429, 201]
    assert "took" not in kept and "result" not in kept["items"][0]["create"]
    # The success is gone: positions no longer map to the request's lines.
    assert [item["create"]["error"]["type"] for item in errors_only["items"]] == [
        "version_conflict_engine_exception",
        "version_conflict_engine_exception",
    ]
    assert none_failed.body == {}


def test_filter_path_wildcards_and_exclusions() -> None:
    value = {"a": {"b1": 1, "b2": {"c": 2}}, "d": [{"e": 1, "f": 2}, {"f": 3}], "took": 5}
    assert filter_path(value, "a.b*") == {"a": {"b1": 1, "b2": {"c": 2}}}
    assert filter_path(value, "**.c") == {"a": {"b2": {"c": 2}}}
    assert filter_path(value, "d.e") == {"d": [{"e": 1}]}
    assert filter_path(value, "-took,-d") == {"a": {"b1": 1, "b2": {"c": 2}}}
    assert filter_path(value, "-a.b2,a.*") == {"a": {"b1": 1}}


# --- security -----------------------------------------------------------------------------------


@pytest.fixture
def secured(es: FakeElasticsearch) -> FakeElasticsearch:
    es.add_user("elastic", "changeme", superuser=True)
    es.add_user(
        "shipper", "s3cret", cluster={"monitor"},
        indices={"logs-*": {"create_doc", "auto_configure"}},
    )  # fmt: skip
    return es


async def test_401_without_or_with_wrong_credentials(secured: FakeElasticsearch) -> None:
    async with connect(secured.url) as anonymous:
        with pytest.raises(elasticsearch.AuthenticationException) as missing:
            await anonymous.info()
    async with connect(secured.url, basic_auth=("shipper", "wrong")) as wrong:
        with pytest.raises(elasticsearch.AuthenticationException) as refused:
            await wrong.info()
    async with connect(secured.url, api_key=("nope", "key")) as bad_key:
        with pytest.raises(elasticsearch.AuthenticationException) as unknown_key:
            await bad_key.info()

    error = missing.value.body["error"]
    assert error["type"] == "security_exception"
    assert error["reason"] == "missing authentication credentials for REST request [/]"
    assert error["header"]["WWW-Authenticate"][0] == 'Basic realm="security", charset="UTF-8"'
    assert "ApiKey" in missing.value.meta.headers["www-authenticate"]
    assert refused.value.body["error"]["reason"] == (
        "unable to authenticate user [shipper] for REST request [/]"
    )
    assert unknown_key.value.body["error"]["additional_unsuccessful_credentials"] == (
        "API key: unable to find apikey with id nope"
    )


async def test_403_per_item_on_an_index_the_user_may_not_write(
    secured: FakeElasticsearch,
) -> None:
    async with connect(secured.url, basic_auth=("shipper", "s3cret")) as client:
        response = await client.bulk(
            operations=[{"create": {"_index": "logs-app-default"}}, doc(),
                        {"create": {"_index": "secrets"}}, {"a": 1}]
        )  # fmt: skip
    assert statuses(response) == [201, 403]
    error = response["items"][1]["create"]["error"]
    assert error["type"] == "security_exception"
    assert error["reason"].startswith(
        "action [indices:admin/auto_create] is unauthorized for user [shipper] with effective "
        "roles [shipper_writer] on indices [secrets]"
    )
    assert secured.indices.keys() == {".ds-logs-app-default-2025.03.14-000001"}


async def test_403_on_info_for_an_api_key_without_monitor(secured: FakeElasticsearch) -> None:
    encoded = secured.add_api_key("k1", "secret-key", owner="shipper", indices={"logs-*": {"all"}})
    async with connect(secured.url, api_key=encoded) as client:
        with pytest.raises(elasticsearch.AuthorizationException) as denied:
            await client.info()
        response = await client.bulk(operations=[{"create": {"_index": "logs-a-b"}}, doc()])
    assert denied.value.body["error"]["reason"] == (
        "action [cluster:monitor/main] is unauthorized for API key id [k1] of user [shipper], "
        "this action is granted by the cluster privileges [monitor,manage,all]"
    )
    assert statuses(response) == [201]
    assert secured.requests[-1].headers["authorization"] == f"ApiKey {encoded}"


async def test_bearer_tokens(secured: FakeElasticsearch) -> None:
    secured.add_token("tok-123", owner="svc", cluster={"monitor"})
    async with connect(secured.url, bearer_auth="tok-123") as client:
        assert (await client.security.authenticate())["authentication_type"] == "token"
        await client.info()


async def test_has_privileges_answers_from_the_configured_set(secured: FakeElasticsearch) -> None:
    async with connect(secured.url, basic_auth=("shipper", "s3cret")) as client:
        answer = await client.security.has_privileges(
            cluster=["monitor", "manage_index_templates"],
            index=[
                {"names": ["logs-app-*", "other"], "privileges": ["create_doc", "auto_configure"]}
            ],
        )
    assert answer.body == {
        "username": "shipper",
        "has_all_requested": False,
        "cluster": {"monitor": True, "manage_index_templates": False},
        "index": {
            "logs-app-*": {"create_doc": True, "auto_configure": True},
            "other": {"create_doc": False, "auto_configure": False},
        },
        "application": {},
    }


# --- plumbing -----------------------------------------------------------------------------------


async def test_request_log_and_waiting(es: FakeElasticsearch, client: AsyncElasticsearch) -> None:
    await client.bulk(operations=[{"create": {"_index": "app", "_id": "1"}}, {"a": 1}])
    await es.until(lambda: len(es.documents("app")) == 1)
    es.wait_until(lambda: es.statuses[200] == 1, timeout=1)

    (request,) = es.bulk_requests()
    assert request.method == "PUT" and request.path == "/_bulk"  # elasticsearch-py 8 PUTs bulks
    assert not request.compressed
    assert request.body_size == request.wire_size == len(request.body)
    assert [(item.action, item.target, item.id, item.status) for item in request.items] == [
        ("create", "app", "1", 201)
    ]
    with pytest.raises(TimeoutError):
        await es.until(lambda: False, timeout=0.05)


def test_raw_http_details() -> None:
    """gzip answers when asked, `pretty`, 406 on an unknown content type, 405 on a wrong method."""
    with FakeElasticsearch() as server, httpx.Client(base_url=server.url) as http:
        zipped = http.get("/", headers={"accept-encoding": "gzip"})
        pretty = http.get("/?pretty")
        wrong_type = http.post("/_bulk", content=b"{}\n", headers={"content-type": "text/plain"})
        wrong_method = http.get("/_bulk")
        posted = http.post(
            "/app/_bulk",
            content=gzip.compress(b'{"index":{}}\n{"a":1}\n'),
            headers={"content-type": "application/x-ndjson", "content-encoding": "gzip"},
        )
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.json()["cluster_name"] == "docker-cluster"
    assert '"cluster_name" : "docker-cluster"' in pretty.text
    assert wrong_type.status_code == 406
    assert wrong_method.status_code == 405
    assert posted.json()["items"][0]["index"]["_index"] == "app"
    assert posted.json()["errors"] is False
