"""Plain HTTP against the imitation: Range, redirects, and every fault, in-process and over /_sim."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from hub_fixtures import REPO_ID, hub, hub_data_dir, hub_server  # noqa: F401
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

from sim.hub import Faults, HubServer

SHARD = "model-00002-of-00007.safetensors"
SIZE = 256 * 1024
HTTP = httpx.Client(timeout=30)  # one client: building one per call costs ~40 ms (TLS context)


def _resolve(hub: HubServer, path: str = SHARD) -> str:
    return f"{hub.url}/{REPO_ID}/resolve/main/{path}"


def _expected(hub: HubServer, path: str = SHARD) -> bytes:
    return hub.local_path(REPO_ID, path).read_bytes()


def test_resolve_redirects_lfs_to_the_cdn_with_linked_headers(hub: HubServer) -> None:
    etags = {p: e for p, _s, e, _l in hub.files(REPO_ID)}
    r = HTTP.head(_resolve(hub))
    assert r.status_code == 302
    assert r.headers["X-Repo-Commit"] == hub.commit(REPO_ID)
    assert r.headers["X-Linked-Etag"] == f'"{etags[SHARD]}"'
    assert int(r.headers["X-Linked-Size"]) == SIZE
    assert r.headers["Location"].startswith(hub.cdn_url + "/repos/")
    # the client's own metadata call reads exactly that
    from huggingface_hub import get_hf_file_metadata

    meta = get_hf_file_metadata(_resolve(hub), token=False)
    assert (meta.etag, meta.size, meta.commit_hash) == (etags[SHARD], SIZE, hub.commit(REPO_ID))
    assert meta.location == r.headers["Location"] and meta.xet_file_data is None
    # small files: answered in place, ETag = git blob sha1
    c = HTTP.head(_resolve(hub, "config.json"))
    assert c.status_code == 200 and c.headers["ETag"] == f'"{etags["config.json"]}"'
    assert c.headers["Accept-Ranges"] == "bytes" and int(c.headers["Content-Length"]) == len(
        _expected(hub, "config.json")
    )
    # plain httpx does not follow redirects unless told to
    assert HTTP.get(_resolve(hub)).status_code == 302
    full = HTTP.get(_resolve(hub), follow_redirects=True)
    assert full.status_code == 200 and full.content == _expected(hub)


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=1000-", 1000, SIZE - 1),
        ("bytes=10-19", 10, 19),
        ("bytes=-100", SIZE - 100, SIZE - 1),
        ("bytes=5-999999999", 5, SIZE - 1),
    ],
)
def test_range_requests(hub: HubServer, header: str, start: int, end: int) -> None:
    for url in (_resolve(hub), _resolve(hub, "config.json")):
        size = SIZE if url.endswith(".safetensors") else len(_expected(hub, "config.json"))
        if start >= size:
            continue
        end_ = min(end, size - 1) if not header.startswith("bytes=-") else size - 1
        start_ = size - 100 if header.startswith("bytes=-") else start
        r = HTTP.get(url, headers={"Range": header}, follow_redirects=True)
        assert r.status_code == 206
        assert r.headers["Content-Range"] == f"bytes {start_}-{end_}/{size}"
        assert r.content == _expected(hub, url.rsplit("/", 1)[1])[start_ : end_ + 1]
    assert sum(hub.stats()["range_requests"].values()) >= 1


def test_unsatisfiable_range(hub: HubServer) -> None:
    r = HTTP.get(_resolve(hub), headers={"Range": f"bytes={SIZE}-"}, follow_redirects=True)
    assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{SIZE}"


def test_ignore_range_fault(hub: HubServer) -> None:
    hub.set_faults(Faults(ignore_range=True, path_glob="*.safetensors", times=1))
    r = HTTP.get(_resolve(hub), headers={"Range": "bytes=100-"}, follow_redirects=True)
    assert r.status_code == 200 and r.content == _expected(hub) and "Content-Range" not in r.headers
    again = HTTP.get(_resolve(hub), headers={"Range": "bytes=100-"}, follow_redirects=True)
    assert again.status_code == 206 and again.content == _expected(hub)[100:]
    assert hub.faults() == [] and hub.stats()["faults_fired"] == {"ignore_range": 1}


def test_cut_fault_truncates_the_body(hub: HubServer) -> None:
    hub.set_faults(Faults(cut_after_bytes=100_000, path_glob="*.safetensors", times=1))
    got = bytearray()
    with pytest.raises(httpx.RemoteProtocolError):
        with HTTP.stream("GET", _resolve(hub), follow_redirects=True) as r:
            assert r.status_code == 200 and int(r.headers["Content-Length"]) == SIZE
            for chunk in r.iter_raw():
                got += chunk
    assert bytes(got) == _expected(hub)[:100_000]
    assert hub.stats()["cut_connections"] == 1
    # resume with a Range request, as staging does
    rest = HTTP.get(_resolve(hub), headers={"Range": f"bytes={len(got)}-"}, follow_redirects=True)
    assert rest.status_code == 206 and bytes(got) + rest.content == _expected(hub)


def test_huggingface_hub_retries_a_cut_in_process(hub: HubServer, tmp_path: Path) -> None:
    """huggingface_hub retries a dropped body inside the same call, from the last *whole* 10 MiB
    chunk it wrote: httpx buffers ``iter_bytes(10 MiB)``, so bytes received in a chunk that never
    completed are dropped. A cut inside the first 10 MiB restarts the file with no Range at all."""
    hub.set_faults(Faults(cut_after_bytes=50_000, path_glob=SHARD, times=1))
    path = hf_hub_download(REPO_ID, SHARD, endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert Path(path).read_bytes() == _expected(hub)
    stats = hub.stats()
    assert stats["cut_connections"] == 1
    assert stats["range_requests"] == {}
    assert stats["bytes_served"][f"{REPO_ID}/{SHARD}"] == 50_000 + SIZE
    assert stats["requests_by_file"][f"{REPO_ID}/{SHARD}"] == {"HEAD 302": 1, "GET": 2}


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_status_fault(hub: HubServer, status: int) -> None:
    hub.set_faults(Faults(status_5xx=status, retry_after=7, path_glob="*.safetensors", times=2))
    assert HTTP.get(_resolve(hub, "config.json")).status_code == 200  # glob does not match
    for _ in range(2):
        r = HTTP.get(_resolve(hub))
        assert r.status_code == status and r.headers["Retry-After"] == "7"
    assert HTTP.get(_resolve(hub)).status_code == 302
    assert hub.stats()["faults_fired"] == {f"status_{status}": 2}


def test_status_fault_on_the_body_only_and_the_client_error(hub: HubServer, tmp_path: Path) -> None:
    hub.set_faults(Faults(status_5xx=502, methods=["GET"], path_glob=SHARD, times=1))
    assert HTTP.head(_resolve(hub)).status_code == 302  # HEAD untouched
    # huggingface_hub does not retry a 5xx on the body GET: it raises
    with pytest.raises(HfHubHTTPError) as e:
        hf_hub_download(REPO_ID, SHARD, endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert e.value.response.status_code == 502
    assert not list(tmp_path.rglob("*.incomplete"))  # and deletes its partial file


def test_throttle_per_connection_and_total(hub: HubServer) -> None:
    t0 = time.monotonic()
    HTTP.get(_resolve(hub), follow_redirects=True)
    fast = time.monotonic() - t0
    hub.set_faults(Faults(throttle_bytes_per_s=1024 * 1024, path_glob="*.safetensors"))
    t0 = time.monotonic()
    r = HTTP.get(_resolve(hub), follow_redirects=True)
    slow = time.monotonic() - t0
    assert r.content == _expected(hub)
    assert 0.23 <= slow < 2.0 and slow > fast + 0.1  # 256 KiB at 1 MiB/s

    hub.set_faults(Faults(total_throttle_bytes_per_s=1024 * 1024, path_glob="*.safetensors"))
    results: list[float] = []

    def fetch(name: str) -> None:
        t = time.monotonic()
        assert len(HTTP.get(_resolve(hub, name), follow_redirects=True).content) == SIZE
        results.append(time.monotonic() - t)

    threads = [threading.Thread(target=fetch, args=(f"model-0000{i}-of-00007.safetensors",)) for i in (3, 4)]
    t0 = time.monotonic()
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert time.monotonic() - t0 >= 0.45  # 512 KiB through one 1 MiB/s budget


def test_first_byte_delay(hub: HubServer) -> None:
    hub.set_faults(Faults(first_byte_delay_s=0.3, path_glob="config.json", times=1))
    t0 = time.monotonic()
    assert HTTP.get(_resolve(hub, "config.json")).status_code == 200
    assert time.monotonic() - t0 >= 0.3


def test_faults_over_http(hub: HubServer) -> None:
    r = HTTP.post(f"{hub.url}/_sim/faults", json={"status_5xx": 503, "path_glob": "config.json", "times": 1})
    assert r.status_code == 200 and r.json()[0]["remaining"] == 1
    assert HTTP.get(_resolve(hub, "config.json")).status_code == 503
    assert HTTP.get(f"{hub.url}/_sim/faults").json() == []
    HTTP.post(f"{hub.url}/_sim/faults", json=[{"ignore_range": True}, {"first_byte_delay_s": 0.01}])
    assert len(HTTP.get(f"{hub.url}/_sim/faults").json()) == 2
    assert HTTP.delete(f"{hub.url}/_sim/faults").status_code == 200 and hub.faults() == []
    assert HTTP.post(f"{hub.url}/_sim/faults", json={"status_5xx": 404}).status_code == 400
    stats = HTTP.get(f"{hub.url}/_sim/stats").json()
    assert stats["status"]["503"] == 1 and stats["faults_fired"]["status_503"] == 1
    HTTP.post(f"{hub.url}/_sim/gate", json={"repo_id": "sim-org/gated-model"})
    repos = HTTP.get(f"{hub.url}/_sim/repos").json()
    assert {r["repo_id"]: r["commit"] for r in repos}[REPO_ID] == hub.commit(REPO_ID)


def test_cdn_urls_are_signed_and_expire(hub: HubServer) -> None:
    location = HTTP.head(_resolve(hub)).headers["Location"]
    assert HTTP.head(location).status_code == 200
    assert HTTP.get(location.replace("Signature=", "Signature=0")).status_code == 403
    hub.cdn_url_ttl_s = -1
    expired = HTTP.head(_resolve(hub)).headers["Location"]
    assert HTTP.get(expired).status_code == 403


def test_many_parallel_downloads(hub: HubServer) -> None:
    shards = [p for p, *_ in hub.files(REPO_ID) if p.endswith(".safetensors")]
    errors: list[BaseException] = []

    def fetch(name: str) -> None:
        try:
            with httpx.Client(follow_redirects=True) as c:
                for _ in range(2):
                    assert c.get(_resolve(hub, name)).content == _expected(hub, name)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=fetch, args=(shards[i % len(shards)],)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert hub.stats()["bytes_total"] == 8 * 2 * SIZE


def test_client_retries_a_5xx_on_head(hub: HubServer, tmp_path: Path) -> None:
    """With nothing cached, huggingface_hub repeats a failed HEAD at once, then with backoff."""
    hub.set_faults(Faults(status_5xx=503, methods=["HEAD"], path_glob="config.json", times=1))
    path = hf_hub_download(REPO_ID, "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert Path(path).read_bytes() == _expected(hub, "config.json")
    assert hub.stats()["requests"][f"HEAD /{REPO_ID}/resolve/main/config.json"] == 2
