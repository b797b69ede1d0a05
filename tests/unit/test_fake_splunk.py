"""The Splunk HEC test server, driven with httpx as shipper's output will drive it."""

from __future__ import annotations

import gzip
import json
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fake_splunk import CODES, FakeSplunk

TOKEN = "11111111-2222-3333-4444-555555555555"
ACK_TOKEN = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
UNKNOWN = "99999999-9999-9999-9999-999999999999"
DISABLED = "dddddddd-0000-0000-0000-000000000000"
CHANNEL = "0e8f4c4a-5c1e-4f57-9a4d-5d2c6c3f7a11"


@pytest.fixture
def hec() -> Iterator[FakeSplunk]:
    with FakeSplunk() as server:
        server.add_token(TOKEN, name="shipper", indexes=("main", "logs"), default_index="logs")
        server.add_token(ACK_TOKEN, name="acked", indexes=("logs",), default_index="logs",
                         use_ack=True)  # fmt: skip
        yield server
        assert server.internal_errors == []


@pytest.fixture
def client(hec: FakeSplunk) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hec.url, timeout=5) as client:
        yield client


def body(*events: dict[str, Any], sep: str = "") -> bytes:
    return sep.join(json.dumps(event) for event in events).encode()


def post(
    client: httpx.Client,
    content: bytes | str,
    *,
    token: str | None = TOKEN,
    channel: str | None = None,
    path: str = "/services/collector/event",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Splunk {token}"
    if channel is not None:
        sent["X-Splunk-Request-Channel"] = channel
    return client.post(path, content=content, headers=sent, params=params)


def acks(client: httpx.Client, ids: list[int], channel: str = CHANNEL) -> dict[str, bool]:
    response = post(
        client, json.dumps({"acks": ids}), token=ACK_TOKEN, channel=channel,
        path="/services/collector/ack",
    )  # fmt: skip
    assert response.status_code == 200, response.text
    answer: dict[str, bool] = response.json()["acks"]
    return answer


def expect(response: httpx.Response, code: int, **extra: Any) -> None:
    status, text = CODES[code]
    assert response.status_code == status
    assert response.json() == {"text": text, "code": code, **extra}


# --- success ------------------------------------------------------------------------------------


def test_concatenated_events_are_indexed_with_their_metadata(
    hec: FakeSplunk, client: httpx.Client
) -> None:
    payload = body(
        {"event": "one", "time": 1700000000.123456, "host": "h1", "source": "s1",
         "sourcetype": "docker", "fields": {"container": "web", "tags": ["a", "b"]}},
        {"event": {"message": "two"}, "index": "main"},
        sep="\n",
    ) + b"  " + body({"event": "three", "time": "1700000001.5"})  # fmt: skip

    response = post(client, payload)

    assert response.content == b'{"text":"Success","code":0}'
    one, two, three = hec.events()
    assert (one.index, one.host, one.source, one.sourcetype) == ("logs", "h1", "s1", "docker")
    assert one.fields == {"container": "web", "tags": ["a", "b"]}
    assert one.time_ns == 1_700_000_000_123_456_000
    assert (two.index, two.event, two.source, two.sourcetype) == (
        "main", {"message": "two"}, "http:shipper", "httpevent",
    )  # fmt: skip
    assert two.host == "splunk"
    assert three.time_ns == 1_700_000_001_500_000_000
    assert [e.position for e in hec.events()] == [0, 1, 2]
    assert hec.payloads("main") == [{"message": "two"}]
    assert hec.codes[0] == 1


def test_every_collector_path_takes_events(hec: FakeSplunk, client: httpx.Client) -> None:
    for path in ("/services/collector", "/services/collector/event/1.0"):
        assert post(client, body({"event": path}), path=path).status_code == 200
    assert hec.payloads() == ["/services/collector", "/services/collector/event/1.0"]


def test_a_top_level_array_is_a_batch(hec: FakeSplunk, client: httpx.Client) -> None:
    expect(post(client, json.dumps([{"event": "a"}, {"event": "b"}])), 0)
    assert hec.payloads() == ["a", "b"]


def test_time_forms(hec: FakeSplunk, client: httpx.Client) -> None:
    payload = body(
        {"event": "s", "time": 1700000000},
        {"event": "ms", "time": 1700000000123},
        {"event": "ns", "time": 1700000000123456789},
        {"event": "str", "time": "1700000000.000001"},
    )
    expect(post(client, payload), 0)
    assert [e.time_ns for e in hec.events()] == [
        1_700_000_000_000_000_000, 1_700_000_000_123_000_000, 1_700_000_000_123_456_789,
        1_700_000_000_000_001_000,
    ]  # fmt: skip


# --- authentication -----------------------------------------------------------------------------


def test_auth_codes(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.add_token(DISABLED, disabled=True)
    event = body({"event": "x"})

    expect(post(client, event, token=None), 2)
    expect(post(client, event, token=None, headers={"Authorization": f"Bearer {TOKEN}"}), 3)
    expect(post(client, event, token=None, headers={"Authorization": TOKEN}), 3)
    expect(post(client, event, token=None, headers={"Authorization": "Splunk"}), 3)
    expect(post(client, event, token=UNKNOWN), 4)
    expect(post(client, event, token=DISABLED), 1)
    expect(post(client, event, params={"token": TOKEN}), 16)
    expect(post(client, event, token=None, params={"token": UNKNOWN}), 4)
    assert hec.events() == []


def test_basic_auth_takes_the_token_as_password(hec: FakeSplunk, client: httpx.Client) -> None:
    response = client.post(
        "/services/collector/event", content=body({"event": "x"}), auth=("anyone", TOKEN)
    )
    expect(response, 0)
    assert hec.events()[0].token_name == "shipper"


def test_the_token_is_never_recorded(hec: FakeSplunk, client: httpx.Client) -> None:
    post(client, body({"event": "x"}))
    post(client, body({"event": "x"}), params={"token": TOKEN})
    recorded = repr(hec.requests)
    assert TOKEN not in recorded
    assert hec.requests[1].query["token"] == "<redacted>"
    assert hec.requests[0].headers["authorization"] == "Splunk <redacted>"


# --- the code table: events ---------------------------------------------------------------------


def test_no_data(hec: FakeSplunk, client: httpx.Client) -> None:
    expect(post(client, b""), 5)
    expect(post(client, b" \n\t"), 5)


def test_malformed_event_keeps_the_events_before_it(hec: FakeSplunk, client: httpx.Client) -> None:
    payload = body({"event": "a"}, {"event": "b"}) + b'{"event": "c"' + body({"event": "d"})

    expect(post(client, payload), 6, **{"invalid-event-number": 2})

    assert hec.payloads() == ["a", "b"]
    assert [e.ack_id for e in hec.events()] == [None, None]
    assert hec.requests[-1].invalid_event_number == 2
    assert hec.requests[-1].events_indexed == 2


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ({"time": 1}, 12),
        ({"event": None}, 12),
        ({"event": ""}, 13),
        ({"event": "   "}, 13),
        ({"event": {}}, 13),
        ({"event": "x", "fields": {"nested": {"a": "b"}}}, 15),
        ({"event": "x", "fields": {"n": 1}}, 15),
        ({"event": "x", "fields": {"l": ["a", 1]}}, 15),
        ({"event": "x", "fields": ["a"]}, 6),
        ({"event": "x", "time": "yesterday"}, 15),
        ({"event": "x", "time": True}, 15),
        ({"event": "x", "host": 7}, 6),
        ("not an object", 6),
    ],
)
def test_bad_event_codes(hec: FakeSplunk, client: httpx.Client, bad: Any, code: int) -> None:
    payload = body({"event": "ok"}) + json.dumps(bad).encode() + body({"event": "after"})

    expect(post(client, payload), code, **{"invalid-event-number": 1})

    assert hec.payloads() == ["ok"]


def test_scientific_time_is_refused(hec: FakeSplunk, client: httpx.Client) -> None:
    expect(post(client, b'{"event":"x","time":1.79E9}'), 15, **{"invalid-event-number": 0})
    expect(post(client, b'{"event":"x","time":"1.79e9"}'), 15, **{"invalid-event-number": 0})


def test_lenient_fields_take_scalars(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.strict_fields = False
    expect(post(client, body({"event": "x", "fields": {"n": 1}})), 0)
    assert hec.events()[0].fields == {"n": "1"}


def test_incorrect_index_counts_from_one(hec: FakeSplunk, client: httpx.Client) -> None:
    payload = body({"event": "a"}, {"event": "b", "index": "secret"}, {"event": "c"})

    expect(post(client, payload), 7, **{"invalid-event-number": 2})
    assert hec.payloads() == ["a"]

    hec.incorrect_index_quirk = False
    expect(post(client, body({"event": "x", "index": "nope"})), 7, **{"invalid-event-number": 0})


def test_unknown_path(client: httpx.Client) -> None:
    response = client.post("/services/collector/nope", headers={"Authorization": f"Splunk {TOKEN}"})
    assert response.status_code == 404
    assert response.json()["code"] == 404


# --- channels and indexer acknowledgement -------------------------------------------------------


def test_ack_token_needs_a_guid_channel(hec: FakeSplunk, client: httpx.Client) -> None:
    event = body({"event": "x"})
    expect(post(client, event, token=ACK_TOKEN), 10)
    expect(post(client, event, token=ACK_TOKEN, channel="not-a-guid"), 11)
    expect(post(client, event, channel="not-a-guid"), 11)
    expect(post(client, event, token=ACK_TOKEN, params={"channel": CHANNEL}), 0, ackId=0)
    assert hec.requests[-1].channel == CHANNEL


def test_ack_ids_count_from_zero_per_channel(hec: FakeSplunk, client: httpx.Client) -> None:
    other = str(uuid.uuid4())
    answers = [
        post(client, body({"event": n}), token=ACK_TOKEN, channel=channel).json()
        for n, channel in enumerate([CHANNEL, CHANNEL, other, CHANNEL, other])
    ]
    assert [a["ackId"] for a in answers] == [0, 1, 0, 2, 1]
    assert {"text": "Success", "code": 0, "ackId": 0} in answers
    assert [(e.channel, e.ack_id) for e in hec.events()][:3] == [
        (CHANNEL, 0), (CHANNEL, 1), (other, 0),
    ]  # fmt: skip


def test_a_true_is_reported_once(hec: FakeSplunk, client: httpx.Client) -> None:
    for n in range(2):
        post(client, body({"event": n}), token=ACK_TOKEN, channel=CHANNEL)

    assert acks(client, [0, 1, 7]) == {"0": True, "1": True, "7": False}
    assert acks(client, [0, 1]) == {"0": False, "1": False}
    assert hec.acks_reported == [(CHANNEL, 0), (CHANNEL, 1)]
    assert acks(client, [0], channel=str(uuid.uuid4())) == {"0": False}


def test_acks_follow_their_delay() -> None:
    now = [100.0]
    with FakeSplunk(clock=lambda: now[0]) as hec, httpx.Client(base_url=hec.url) as client:
        hec.add_token(ACK_TOKEN, indexes=("logs",), default_index="logs", use_ack=True)
        hec.delay_acks(30)
        post(client, body({"event": "x"}), token=ACK_TOKEN, channel=CHANNEL)
        now[0] += 29.9
        assert acks(client, [0]) == {"0": False}
        now[0] += 0.1
        assert acks(client, [0]) == {"0": True}
        assert hec.internal_errors == []


def test_lost_acks_never_come(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.lose_acks(1)
    for n in range(2):
        post(client, body({"event": n}), token=ACK_TOKEN, channel=CHANNEL)

    assert acks(client, [0, 1]) == {"0": False, "1": True}
    assert acks(client, [0]) == {"0": False}
    assert [p.ack_id for p in hec.pending_acks(CHANNEL)] == [0]
    assert hec.payloads() == [0, 1]  # the events are indexed; only the ack is missing

    hec.complete_acks()
    assert acks(client, [0]) == {"0": True}


def test_lost_acks_by_predicate_and_held_acks(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.lose_acks(lambda pending: pending.ack_id % 2 == 1)
    with hec.hold_acks():
        for n in range(4):
            post(client, body({"event": n}), token=ACK_TOKEN, channel=CHANNEL)
        assert acks(client, [0, 1, 2, 3]) == {"0": False, "1": False, "2": False, "3": False}
    assert acks(client, [0, 1, 2, 3]) == {"0": True, "1": False, "2": True, "3": False}


def test_a_failed_batch_gets_no_ack_id(hec: FakeSplunk, client: httpx.Client) -> None:
    response = post(client, body({"event": "a"}, {"event": ""}), token=ACK_TOKEN, channel=CHANNEL)

    expect(response, 13, **{"invalid-event-number": 1})
    assert [(e.event, e.ack_id) for e in hec.events()] == [("a", None)]
    expect(post(client, body({"event": "b"}), token=ACK_TOKEN, channel=CHANNEL), 0, ackId=0)


def test_ack_query_errors(hec: FakeSplunk, client: httpx.Client) -> None:
    query = json.dumps({"acks": [0]})
    path = "/services/collector/ack"
    expect(post(client, query, channel=CHANNEL, path=path), 14)
    expect(post(client, query, token=ACK_TOKEN, path=path), 10)
    expect(post(client, query, token=None, channel=CHANNEL, path=path), 2)
    expect(post(client, "{nope", token=ACK_TOKEN, channel=CHANNEL, path=path), 6)
    expect(post(client, '{"acks":["0"]}', token=ACK_TOKEN, channel=CHANNEL, path=path), 6)


# --- health, busy, failures ---------------------------------------------------------------------


def test_health_does_not_check_the_token(hec: FakeSplunk, client: httpx.Client) -> None:
    expect(client.get("/services/collector/health"), 17)
    expect(client.get("/services/collector/health/1.0", headers={"Authorization": "x"}), 17)
    with hec.busy():
        expect(client.get("/services/collector/health"), 18)
    hec.health_code = 19
    expect(client.get("/services/collector/health"), 19)


def test_busy_phase(hec: FakeSplunk, client: httpx.Client) -> None:
    with hec.busy():
        for _ in range(3):
            expect(post(client, body({"event": "x"})), 9)
        assert hec.events() == []
    expect(post(client, body({"event": "x"})), 0)
    assert hec.codes[9] == 3


def test_busy_for_and_fail_requests(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.busy_for(2)
    hec.fail_requests(1, status=500)
    hec.fail_requests(1, status=502, body=b"<html>bad gateway</html>")
    results = [post(client, body({"event": n})) for n in range(5)]

    assert [r.status_code for r in results] == [503, 503, 500, 502, 200]
    expect(results[2], 8)
    assert results[3].text == "<html>bad gateway</html>"
    assert hec.payloads() == [4]


def test_slow_answers(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.slow_next(1, 0.2)
    started = time.monotonic()
    expect(post(client, body({"event": "x"})), 0)
    assert time.monotonic() - started >= 0.2
    with pytest.raises(httpx.ReadTimeout):
        hec.delay = 0.5
        client.post(
            "/services/collector/event", content=body({"event": "y"}),
            headers={"Authorization": f"Splunk {TOKEN}"}, timeout=0.1,
        )  # fmt: skip
    hec.delay = 0
    hec.wait_until(lambda: len(hec.events()) == 2)  # answered late, but indexed


# --- size and encoding --------------------------------------------------------------------------


def test_too_large_bodies(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.max_content_length = 100
    big = body(*({"event": f"event {n}"} for n in range(10)))

    response = post(client, big)
    assert response.status_code == 413
    assert "too large" in response.text
    assert response.headers["content-type"].startswith("text/html")

    packed = post(client, gzip.compress(big), headers={"Content-Encoding": "gzip"})
    assert packed.status_code == 413  # counted after decompression
    expect(post(client, body({"event": "small"})), 0)  # the connection is still usable
    assert hec.payloads() == ["small"]


def test_gzip_bodies(hec: FakeSplunk, client: httpx.Client) -> None:
    payload = body({"event": "a"}, {"event": "b"})
    expect(post(client, gzip.compress(payload), headers={"Content-Encoding": "gzip"}), 0)
    assert hec.payloads() == ["a", "b"]
    assert hec.requests[-1].compressed
    assert hec.requests[-1].wire_size != hec.requests[-1].body_size

    deflated = post(client, zlib.compress(payload), headers={"Content-Encoding": "deflate"})
    assert deflated.status_code == 415
    broken = post(client, b"not gzip", headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400
    assert "Unparsable gzip header" in broken.text


# --- the network --------------------------------------------------------------------------------


def test_dropped_before_processing(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.drop_next(1)
    with pytest.raises(httpx.RemoteProtocolError):
        post(client, body({"event": "x"}), token=ACK_TOKEN, channel=CHANNEL)
    assert hec.events() == []
    assert hec.requests[-1].dropped
    expect(post(client, body({"event": "y"}), token=ACK_TOKEN, channel=CHANNEL), 0, ackId=0)


def test_dropped_after_processing(hec: FakeSplunk, client: httpx.Client) -> None:
    hec.drop_next(1, after_processing=True, reset=True)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(client, body({"event": "x"}), token=ACK_TOKEN, channel=CHANNEL)
    assert hec.payloads() == ["x"]
    assert hec.requests[-1].ack_id == 0
    expect(post(client, body({"event": "x"}), token=ACK_TOKEN, channel=CHANNEL), 0, ackId=1)
    assert acks(client, [0, 1]) == {"0": True, "1": True}


def test_down_and_back_on_the_same_port(hec: FakeSplunk, client: httpx.Client) -> None:
    expect(post(client, body({"event": "before"})), 0)
    port = hec.port
    with hec.down(), pytest.raises(httpx.ConnectError):
        post(client, body({"event": "during"}))
    assert hec.port == port
    expect(post(client, body({"event": "after"})), 0)
    assert hec.payloads() == ["before", "after"]


# --- raw ----------------------------------------------------------------------------------------


def test_raw_lines_become_events(hec: FakeSplunk, client: httpx.Client) -> None:
    params = {"host": "node1", "source": "docker", "sourcetype": "json", "index": "main"}
    response = post(
        client, "first line\r\n\nsecond line\n", path="/services/collector/raw",
        channel=CHANNEL, params=params,
    )  # fmt: skip

    expect(response, 0)
    events = hec.events()
    assert [e.event for e in events] == ["first line", "second line"]
    assert {(e.index, e.host, e.source, e.sourcetype, e.endpoint) for e in events} == {
        ("main", "node1", "docker", "json", "raw")
    }


def test_raw_codes(hec: FakeSplunk, client: httpx.Client) -> None:
    raw = "/services/collector/raw"
    expect(post(client, "x", path=raw), 10)
    expect(post(client, "\n\n", path=raw, channel=CHANNEL), 5)
    expect(post(client, "x", path=raw, channel=CHANNEL, params={"index": "secret"}), 7)
    expect(post(client, "x", path=raw, token=ACK_TOKEN, channel=CHANNEL), 0, ackId=0)
    hec.raw_requires_channel = False
    expect(post(client, "y", path=raw), 0)
    assert hec.payloads() == ["x", "y"]


# --- async --------------------------------------------------------------------------------------


async def test_async_client_and_until(hec: FakeSplunk) -> None:
    async with httpx.AsyncClient(base_url=hec.url) as client:
        response = await client.post(
            "/services/collector/event", content=body({"event": "x"}),
            headers={"Authorization": f"Splunk {ACK_TOKEN}", "X-Splunk-Request-Channel": CHANNEL},
        )  # fmt: skip
    assert response.json() == {"text": "Success", "code": 0, "ackId": 0}
    await hec.until(lambda: len(hec.pending_acks()) == 1)
