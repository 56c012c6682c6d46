"""Asset URLs integrators fetch without an API key: signed /v1/assets URLs, S3 presigned URLs, ranges, streaming."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from api_testkit import TenantCtx, add_artifact, campaign_spec
from atelier_api import artifacts as artifact_service
from atelier_api import create_app
from atelier_api.concurrency import TenantConcurrency
from atelier_api.dashboard.session import resolve_secret as dashboard_resolve_secret
from atelier_control import asset_urls
from atelier_control.asset_urls import asset_link, asset_url, expiry, sign, signing_key, verify
from atelier_control.models import Artifact
from atelier_control.secrets import resolve_secret
from atelier_runtime.settings import Settings
from atelier_runtime.storage import CHUNK_BYTES, LocalStore, S3Store
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import StreamingResponse

HOUR = 3600
DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes, every offset distinguishable


def _job(client: TestClient, tenant: TenantCtx) -> str:
    r = client.post("/v1/jobs", json={"kind": "campaign", "spec": campaign_spec()}, headers=tenant.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _listed(client: TestClient, tenant: TenantCtx, job_id: str, artifact_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/jobs/{job_id}/artifacts", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return next(i for i in r.json()["items"] if i["id"] == artifact_id)


@pytest.fixture
def art(client: TestClient, tenant: TenantCtx, factory: sessionmaker[Session], store: LocalStore) -> dict[str, str]:
    job_id = _job(client, tenant)
    artifact_id = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset",
                               name="ad 1080x1080 «v0».png", data=DATA, content_type="image/png")
    return {"job_id": job_id, "id": artifact_id}


def _anonymous(client: TestClient) -> TestClient:
    """A client of the same app with no key, no cookie: what an integrator's fetcher is."""
    fresh = TestClient(client.app)
    assert "authorization" not in fresh.headers
    return fresh


# ---------------------------------------------------------------- signing


def test_sign_and_verify_reject_tampering_expiry_and_other_keys(settings: Settings) -> None:
    key = signing_key(settings)
    sig = sign("art_1", 2_000_000_000, key)
    assert verify("art_1", 2_000_000_000, sig, key, now=1_999_999_999)
    assert not verify("art_1", 2_000_000_000, sig, key, now=2_000_000_000)  # expired at the instant
    assert not verify("art_2", 2_000_000_000, sig, key, now=0)
    assert not verify("art_1", 2_000_003_600, sig, key, now=0)
    assert not verify("art_1", 2_000_000_000, sig[:-1] + ("A" if sig[-1] != "A" else "B"), key, now=0)
    assert not verify("art_1", 2_000_000_000, "é" + sig, key, now=0)  # non-ASCII: False, not an error
    assert not verify("art_1", 2_000_000_000, sig, b"k" * 32, now=0)
    assert "=" not in sig and "+" not in sig and "/" not in sig  # base64url, unpadded: safe in a query


def test_the_asset_key_is_derived_from_the_session_secret_for_this_use_only(settings: Settings) -> None:
    secret = resolve_secret(settings)
    assert dashboard_resolve_secret is resolve_secret  # moved, still importable where it was
    assert (settings.home / "session_secret").stat().st_mode & 0o777 == 0o600
    key = signing_key(settings)
    assert secret not in key and key != hashlib.sha256(b"atelier-dashboard-session\x00" + secret).digest()
    other = Settings(home=settings.home, session_secret="s" * 40)
    assert signing_key(other) != key


def test_the_generated_secret_is_one_secret_when_processes_race(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    got: list[bytes] = []
    barrier = threading.Barrier(8)

    def first_use() -> None:
        barrier.wait()
        got.append(resolve_secret(settings))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and len(set(got)) == 1 and len(got[0]) >= 32
    assert sorted(os.listdir(settings.home)) == ["session_secret"]  # no temp file left behind


def test_urls_are_stable_within_the_hour_and_expire_ttl_rounded_up(settings: Settings) -> None:
    start = 1_900_000_800  # a whole hour
    kw: dict[str, Any] = {"content_type": "image/png", "filename": "a.png"}
    early = asset_link(settings, "art_1", "k/a.png", now=start + 1, **kw)
    late = asset_link(settings, "art_1", "k/a.png", now=start + HOUR - 1, **kw)
    next_hour = asset_link(settings, "art_1", "k/a.png", now=start + HOUR + 1, **kw)
    assert early == late and early.url != next_hour.url
    assert early.url.startswith("/v1/assets/art_1?expires=")  # relative without public_base_url
    expires = early.expires_at.timestamp()
    assert expires % HOUR == 0 and start + HOUR - 1 + settings.asset_url_ttl_s < expires <= start + 1 + \
        settings.asset_url_ttl_s + HOUR
    assert asset_url(settings, "art_1", "k/a.png", now=start + 1, **kw) == early.url
    assert expiry(datetime.fromtimestamp(start + 1, UTC), 600) == expiry(start + 1, 600) == start + HOUR


def test_public_base_url_is_validated_and_makes_urls_absolute(settings: Settings) -> None:
    s = settings.model_copy(update={"public_base_url": None})
    assert Settings(public_base_url="https://atelier.example.com/").public_base_url == "https://atelier.example.com"
    assert Settings(public_base_url="http://10.0.0.5:8000/api").public_base_url == "http://10.0.0.5:8000/api"
    for bad in ("ftp://atelier.example.com", "https://atelier.example.com/?x=1", "https://a.example.com/#f",
                "atelier.example.com", "https://"):
        with pytest.raises(ValidationError, match="public_base_url"):
            Settings(public_base_url=bad)
    with pytest.raises(ValidationError, match="asset_url_ttl_s"):
        Settings(asset_url_ttl_s=7 * 24 * HOUR + 1)
    with pytest.raises(ValidationError, match="asset_url_ttl_s"):
        Settings(asset_url_ttl_s=59)
    for bad in ("https://s3.example.com/bucket", "s3.example.com:port", "ftp://s3.example.com", "s3.example.com?a"):
        with pytest.raises(ValidationError, match="s3_public_endpoint"):
            Settings(s3_public_endpoint=bad)
    assert Settings(s3_public_endpoint="https://s3.example.com/").s3_public_endpoint == "https://s3.example.com"
    base = s.model_copy(update={"public_base_url": "https://atelier.example.com"})
    url = asset_url(base, "art_1", "k", content_type="image/png", filename="a.png")
    assert url.startswith("https://atelier.example.com/v1/assets/art_1?expires=")


# ---------------------------------------------------------------- the public route


def test_download_url_fetches_the_bytes_with_no_api_key(client: TestClient, tenant: TenantCtx,
                                                        art: dict[str, str]) -> None:
    item = _listed(client, tenant, art["job_id"], art["id"])
    url = item["download_url"]
    assert url.startswith(f"/v1/assets/{art['id']}?expires=") and "&signature=" in url
    expires_at = datetime.fromisoformat(item["download_url_expires_at"])
    assert int(parse_qs(urlsplit(url).query)["expires"][0]) == expires_at.timestamp()
    r = _anonymous(client).get(url)
    assert r.status_code == 200, r.text
    assert r.content == DATA and r.headers["content-type"] == "image/png"
    digest = hashlib.sha256(DATA).hexdigest()
    assert r.headers["etag"] == f'"{digest}"' and r.headers["x-content-sha256"] == digest
    assert r.headers["accept-ranges"] == "bytes" and r.headers["content-length"] == str(len(DATA))
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["content-security-policy"] == "sandbox"
    assert r.headers["content-disposition"].startswith('inline; filename="ad 1080x1080 v0.png"; filename*=UTF-8')
    assert r.headers["referrer-policy"] == "no-referrer" and r.headers["cache-control"].startswith("private")
    assert _anonymous(client).get(url, headers={"If-None-Match": f'"{digest}"'}).status_code == 304
    # the same URL again within the hour
    assert _listed(client, tenant, art["job_id"], art["id"])["download_url"] == url


@pytest.mark.parametrize("change", ["signature", "expires", "artifact", "expired"])
def test_a_tampered_or_expired_signature_is_403_naming_it(client: TestClient, tenant: TenantCtx,
                                                           settings: Settings, art: dict[str, str],
                                                           change: str) -> None:
    url = _listed(client, tenant, art["job_id"], art["id"])["download_url"]
    query = parse_qs(urlsplit(url).query)
    expires, signature, artifact_id = int(query["expires"][0]), query["signature"][0], art["id"]
    if change == "signature":
        signature = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    elif change == "expires":
        expires += HOUR
    elif change == "artifact":
        artifact_id = artifact_id[:-1] + ("0" if artifact_id[-1] != "0" else "1")
    else:  # a URL made two weeks ago: its own signature, past its expiry
        old = asset_url(settings, art["id"], "k", content_type="image/png", filename="a",
                        now=datetime.now(UTC).timestamp() - 14 * 24 * HOUR)
        q = parse_qs(urlsplit(old).query)
        expires, signature = int(q["expires"][0]), q["signature"][0]
    r = _anonymous(client).get(f"/v1/assets/{artifact_id}", params={"expires": expires, "signature": signature})
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["errors"][0]["field"] == "signature"
    assert ("expired" in body["detail"]) == (change == "expired")
    assert DATA[:16] not in r.content


def test_a_wrong_signature_says_nothing_about_which_ids_exist(client: TestClient, tenant: TenantCtx,
                                                             other_tenant: TenantCtx, art: dict[str, str]) -> None:
    bogus = {"expires": 4_000_000_000, "signature": "x" * 43}
    real = client.get(f"/v1/assets/{art['id']}", params=bogus, headers=other_tenant.headers)
    none = client.get("/v1/assets/art_doesnotexist", params=bogus, headers=other_tenant.headers)
    assert real.status_code == none.status_code == 403 and real.json() == none.json()
    assert client.get(f"/v1/assets/{art['id']}", headers=tenant.headers).status_code == 422  # an API key is no URL


def test_a_signed_url_for_an_artifact_that_is_gone_is_404(client: TestClient, settings: Settings) -> None:
    url = asset_url(settings, "art_deleted", "k/x.png", content_type="image/png", filename="x.png")
    r = _anonymous(client).get(url)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_public_base_url_makes_download_urls_absolute(make_client: Any, tenant: TenantCtx,
                                                      factory: sessionmaker[Session], store: LocalStore) -> None:
    c = make_client(public_base_url="https://atelier.example.com/")
    job_id = _job(c, tenant)
    artifact_id = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset", name="a",
                               data=DATA, content_type="image/png")
    url = _listed(c, tenant, job_id, artifact_id)["download_url"]
    assert url.startswith(f"https://atelier.example.com/v1/assets/{artifact_id}?expires=")
    parts = urlsplit(url)
    assert _anonymous(c).get(f"{parts.path}?{parts.query}").content == DATA


def test_views_listed_without_links_have_no_download_url(tenant: TenantCtx, art: dict[str, str],
                                                         factory: sessionmaker[Session]) -> None:
    with factory() as s:  # the dashboard lists artifacts this way: it shows no download URL
        listed = artifact_service.list_job_artifacts(s, tenant_id=tenant.id, job_id=art["job_id"])
    assert [i.id for i in listed.items] == [art["id"]]
    assert listed.items[0].download_url is None and listed.items[0].download_url_expires_at is None


def test_one_address_runs_a_bounded_number_of_downloads(client: TestClient, tenant: TenantCtx,
                                                        art: dict[str, str]) -> None:
    url = _listed(client, tenant, art["job_id"], art["id"])["download_url"]
    guard = TenantConcurrency({"assets": 1})
    client.app.state.asset_concurrency = guard  # type: ignore[attr-defined]
    held = guard.acquire("assets", "testclient")  # one download of this address in flight
    r = _anonymous(client).get(url)
    assert r.status_code == 429 and r.json()["limit"] == "concurrent_assets" and r.headers["retry-after"] == "1"
    held()
    assert _anonymous(client).get(url).content == DATA
    assert guard.held("assets", "testclient") == 0  # the finished download gave its slot back
    assert client.get(url.replace("signature=", "signature=x")).status_code == 403
    assert guard.held("assets", "testclient") == 0


# ---------------------------------------------------------------- ranges, on both routes


def _get(client: TestClient, tenant: TenantCtx, art: dict[str, str], route: str, headers: dict[str, str]) -> Any:
    if route == "content":
        return client.get(f"/v1/artifacts/{art['id']}/content", headers={**tenant.headers, **headers})
    url = _listed(client, tenant, art["job_id"], art["id"])["download_url"]
    return _anonymous(client).get(url, headers=headers)


@pytest.mark.parametrize("route", ["content", "asset"])
def test_single_ranges_are_206_with_the_exact_bytes(client: TestClient, tenant: TenantCtx, art: dict[str, str],
                                                    route: str) -> None:
    n = len(DATA)
    for header, start, end in [("bytes=2-5", 2, 5), ("bytes=1000-", 1000, n - 1), ("bytes=-7", n - 7, n - 1),
                               ("bytes=0-0", 0, 0), ("bytes=1020-99999", 1020, n - 1), ("bytes=-99999", 0, n - 1)]:
        r = _get(client, tenant, art, route, {"Range": header})
        assert r.status_code == 206, (header, r.text)
        assert r.content == DATA[start:end + 1], header
        assert r.headers["content-range"] == f"bytes {start}-{end}/{n}", header
        assert r.headers["content-length"] == str(end - start + 1)
        assert r.headers["etag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'


@pytest.mark.parametrize("route", ["content", "asset"])
def test_unsatisfiable_ranges_are_416_and_the_rest_get_the_whole_object(
        client: TestClient, tenant: TenantCtx, art: dict[str, str], route: str) -> None:
    n = len(DATA)
    for header in (f"bytes={n}-", f"bytes={n + 5}-{n + 9}", "bytes=-0"):
        r = _get(client, tenant, art, route, {"Range": header})
        assert r.status_code == 416, header
        assert r.headers["content-range"] == f"bytes */{n}"
        assert r.headers["content-type"] == "application/problem+json" and r.json()["errors"][0]["field"] == "Range"
    # several ranges, a unit we do not serve, nonsense, a reversed range: the whole object, 200
    for header in ("bytes=0-1,4-5", "items=0-1", "bytes=abc", "bytes=5-2", "bytes=-", "bytes=1-2-3"):
        r = _get(client, tenant, art, route, {"Range": header})
        assert r.status_code == 200 and r.content == DATA, header
        assert r.headers["accept-ranges"] == "bytes" and "content-range" not in r.headers
    # If-Range: the range only while the client's copy is the current one
    etag = f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert _get(client, tenant, art, route, {"Range": "bytes=0-3", "If-Range": etag}).status_code == 206
    stale = _get(client, tenant, art, route, {"Range": "bytes=0-3", "If-Range": '"old"'})
    assert stale.status_code == 200 and stale.content == DATA


def test_the_openapi_documents_206_and_416_and_the_public_route_needs_no_key(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    for path in ("/v1/artifacts/{artifact_id}/content", "/v1/assets/{artifact_id}"):
        responses = doc["paths"][path]["get"]["responses"]
        assert {"200", "206", "416"} <= set(responses), path
    asset = doc["paths"]["/v1/assets/{artifact_id}"]["get"]
    assert not asset.get("security") and {p["name"] for p in asset["parameters"]} >= {"expires", "signature"}
    assert "download_url" in doc["components"]["schemas"]["ArtifactView"]["properties"]


# ---------------------------------------------------------------- streaming


class NoWholeReads(LocalStore):
    """A store that fails any attempt to load a whole object into memory."""

    def get(self, key: str) -> bytes:
        raise AssertionError(f"read {key} whole")


def test_a_large_object_streams_in_chunks(settings: Settings, engine: Any, celery: Any, runtime: Any,
                                          tenant: TenantCtx, factory: sessionmaker[Session], tmp_path: Path) -> None:
    store = NoWholeReads(tmp_path / "big")
    big = os.urandom(5 * 1024 * 1024 + 17)
    app = create_app(settings, engine=engine, store=store, celery=celery, runtime=runtime)
    with TestClient(app) as c:
        job_id = _job(c, tenant)
        artifact_id = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset",
                                   name="big.bin", data=big, content_type="application/octet-stream")
        whole = c.get(f"/v1/artifacts/{artifact_id}/content", headers=tenant.headers)
        assert whole.status_code == 200 and whole.content == big
        assert whole.headers["x-content-sha256"] == hashlib.sha256(big).hexdigest()
        url = _listed(c, tenant, job_id, artifact_id)["download_url"]
        tail = _anonymous(c).get(url, headers={"Range": "bytes=-1000"})
        assert tail.status_code == 206 and tail.content == big[-1000:]
        with _anonymous(c).stream("GET", url) as r:
            sizes = [len(chunk) for chunk in r.iter_raw()]
        assert sum(sizes) == len(big) and len(sizes) > 1

    with factory() as s:
        artifact = s.get(Artifact, artifact_id)
        assert artifact is not None
        response = artifact_service.content_response(store, artifact, range_header=None, if_range=None, headers={})
    assert isinstance(response, StreamingResponse)

    async def chunks() -> list[int]:
        return [len(chunk) async for chunk in response.body_iterator]  # type: ignore[arg-type]

    # in a thread of its own: an earlier test of the session (playwright's sync API) may hold an event loop here
    with ThreadPoolExecutor(max_workers=1) as pool:
        sizes = pool.submit(anyio.run, chunks).result()
    assert sum(sizes) == len(big) and max(sizes) <= CHUNK_BYTES


# ---------------------------------------------------------------- S3: presigned for the public endpoint


@pytest.fixture
def s3_settings(s3_endpoint: dict[str, str], tmp_path: Path) -> Settings:
    host, port = s3_endpoint["ATELIER_S3_ENDPOINT"].split(":")
    return Settings(home=tmp_path, storage="s3", s3_endpoint=s3_endpoint["ATELIER_S3_ENDPOINT"],
                    s3_access_key=s3_endpoint["ATELIER_S3_ACCESS_KEY"],
                    s3_secret_key=s3_endpoint["ATELIER_S3_SECRET_KEY"], s3_bucket=s3_endpoint["ATELIER_S3_BUCKET"],
                    s3_secure=False, s3_public_endpoint=f"localhost:{port}")  # another name than the API uses


def test_s3_asset_urls_are_presigned_for_the_public_endpoint(s3_settings: Settings) -> None:
    store = S3Store.from_settings(s3_settings)
    stored = store.put("tenants/t/jobs/j/render.ad/presign.png", DATA, "image/png")
    port = s3_settings.s3_endpoint.split(":")[1]
    start = (int(datetime.now(UTC).timestamp()) // HOUR) * HOUR
    link = asset_link(s3_settings, "art_s3", stored.key, content_type="image/png", filename="ad «v0».png",
                      store=store)
    assert link.url.startswith(f"http://localhost:{port}/{s3_settings.s3_bucket}/tenants/t/jobs/j/")
    query = parse_qs(urlsplit(link.url).query)
    assert query["response-content-type"] == ["image/png"]
    assert query["response-content-disposition"][0].startswith('inline; filename="ad v0.png"')
    assert start + s3_settings.asset_url_ttl_s - HOUR <= link.expires_at.timestamp() <= \
        start + s3_settings.asset_url_ttl_s + 2 * HOUR
    r = httpx.get(link.url)  # plain HTTP, no credentials: the URL is the credential
    assert r.status_code == 200 and r.content == DATA
    assert httpx.get(link.url, headers={"Range": "bytes=3-9"}).content == DATA[3:10]
    assert httpx.get(link.url.replace("presign.png", "presign2.png")).status_code == 403  # another object
    # the same URL all through the hour; one made without a store (the orchestrator) is the same URL
    kw: dict[str, Any] = {"content_type": "image/png", "filename": "a.png"}
    first = asset_url(s3_settings, "art_s3", stored.key, store=store, now=start + 1, **kw)
    assert asset_url(s3_settings, "art_s3", stored.key, store=store, now=start + HOUR - 1, **kw) == first
    assert asset_url(s3_settings, "art_s3", stored.key, now=start + HOUR - 1, **kw) == first
    assert asset_url(s3_settings, "art_s3", stored.key, store=store, now=start + HOUR + 1, **kw) != first
    assert httpx.get(first).content == DATA
    # a store without a public client (injected) cannot presign: the API serves the asset instead
    bare = S3Store(store.client, store.bucket)
    assert asset_url(s3_settings, "art_s3", stored.key, store=bare, **kw).startswith("/v1/assets/art_s3?")
    with pytest.raises(ValueError):
        store.presigned_get(stored.key, expires_s=8 * 24 * HOUR, content_type="image/png", filename="a")


def test_an_expired_presigned_url_is_refused_by_s3(s3_settings: Settings) -> None:
    store = S3Store.from_settings(s3_settings)
    stored = store.put("tenants/t/jobs/j/render.ad/old.png", DATA, "image/png")
    settings = s3_settings.model_copy(update={"asset_url_ttl_s": 60})
    old = asset_url(settings, "art_s3", stored.key, content_type="image/png", filename="a.png", store=store,
                    now=datetime.now(UTC).timestamp() - 3 * HOUR)
    assert httpx.get(old).status_code == 403


def test_s3_download_urls_in_the_api_and_s3_ranges(s3_settings: Settings, engine: Any, celery: Any, runtime: Any,
                                                   tenant: TenantCtx, factory: sessionmaker[Session]) -> None:
    store = S3Store.from_settings(s3_settings)
    app = create_app(s3_settings, engine=engine, store=store, celery=celery, runtime=runtime)
    with TestClient(app) as c:
        job_id = _job(c, tenant)
        artifact_id = add_artifact(factory, store, tenant_id=tenant.id, job_id=job_id, kind="asset", name="a.png",
                                   data=DATA, content_type="image/png")
        url = _listed(c, tenant, job_id, artifact_id)["download_url"]
        assert url.startswith("http://localhost:") and "X-Amz-Signature=" in url
        assert httpx.get(url).content == DATA
        # the API's own routes stream from S3 as well, ranges included
        part = c.get(f"/v1/artifacts/{artifact_id}/content", headers={**tenant.headers, "Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == DATA[10:20]
        assert part.headers["x-content-sha256"] == hashlib.sha256(DATA).hexdigest()
        signed = asset_urls.AssetLinks(s3_settings.model_copy(update={"s3_public_endpoint": None}),
                                       key=signing_key(s3_settings)).link(artifact_id, "k", content_type="image/png",
                                                                          filename="a.png")
        assert signed.url.startswith("/v1/assets/")  # no public endpoint: the API serves it
        r = _anonymous(c).get(signed.url, headers={"Range": "bytes=-4"})
        assert r.status_code == 206 and r.content == DATA[-4:]
