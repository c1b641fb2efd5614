"""Pure logic of model staging: plan, partial choice, trust, retries, errors, preflight, layout."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from huggingface_hub.utils.sha import git_hash

from tasks.report import artifact_key
from tasks.secrets import load_secret, read_dotenv
from tasks.staging import errors
from tasks.staging.cache import HF_ORPHAN_RE, GitBlobSha1, RepoCache, is_hf_orphan
from tasks.staging.hub import DEFAULT_ALLOW_PATTERNS, access_error, classify_response
from tasks.staging.manifest import ManifestFile, load_manifest, save_manifest
from tasks.staging.models import BlobState, RemoteFile, RepoListing
from tasks.staging.plan import choose_partial, is_trusted, make_plan, needs_hash, plan_file
from tasks.staging.preflight import check_space, disk_margin_for
from tasks.staging.progress import Progress
from tasks.staging.transfer import backoff_delay, parse_content_range, parse_retry_after

SHA = "a" * 64
GIT = "b" * 40


def lfs_file(size: int = 100, etag: str = SHA) -> RemoteFile:
    return RemoteFile(path="model-00001-of-00002.safetensors", size=size, etag=etag, lfs=True, sha256=etag)


def small_file() -> RemoteFile:
    return RemoteFile(path="config.json", size=10, etag=GIT, lfs=False, git_sha1=GIT)


# -- plan ---------------------------------------------------------------------------------------
def test_absent_file_is_downloaded() -> None:
    p = plan_file(lfs_file(), BlobState(etag=SHA))
    assert (p.action, p.offset, p.replace_blob) == ("download", 0, False)


def test_trusted_blob_is_reused_without_hash() -> None:
    st = BlobState(etag=SHA, blob_size=100, blob_mtime_ns=5, trusted=True)
    assert not needs_hash(lfs_file(), st, verify=False)
    assert plan_file(lfs_file(), st).action == "reuse"


def test_verify_hashes_even_trusted_blobs() -> None:
    st = BlobState(etag=SHA, blob_size=100, blob_mtime_ns=5, trusted=True)
    assert needs_hash(lfs_file(), st, verify=True)


def test_untrusted_blob_needs_hash_and_bad_hash_is_replaced() -> None:
    st = BlobState(etag=SHA, blob_size=100, blob_mtime_ns=5)
    assert needs_hash(lfs_file(), st, verify=False)
    st.hashed = False
    p = plan_file(lfs_file(), st)
    assert (p.action, p.replace_blob) == ("download", True)
    st.hashed = True
    assert plan_file(lfs_file(), st).action == "reuse"


def test_wrong_size_blob_is_replaced_without_hashing() -> None:
    st = BlobState(etag=SHA, blob_size=99)
    assert not needs_hash(lfs_file(), st, verify=True)
    p = plan_file(lfs_file(), st)
    assert p.action == "download" and p.replace_blob and "99" in p.reason


def test_partial_is_resumed_and_hf_orphan_adopted() -> None:
    orphan = f"{SHA}.1a2b3c4d.incomplete"
    p = plan_file(lfs_file(), BlobState(etag=SHA, partial_sizes={orphan: 40, f"{SHA}.incomplete": 30}))
    assert (p.action, p.offset, p.partial, p.adopt) == ("resume", 40, orphan, True)
    p = plan_file(lfs_file(), BlobState(etag=SHA, partial_sizes={f"{SHA}.incomplete": 30}))
    assert (p.action, p.offset, p.adopt) == ("resume", 30, False)


def test_choose_partial_prefers_longest_then_stable_and_ignores_oversized() -> None:
    stable, orphan = f"{SHA}.incomplete", f"{SHA}.deadbeef.incomplete"
    assert choose_partial(100, {stable: 50, orphan: 50}) == (stable, 50)
    assert choose_partial(100, {stable: 10, orphan: 50}) == (orphan, 50)
    assert choose_partial(100, {stable: 101}) == (None, 0)
    assert choose_partial(100, {stable: 0}) == (None, 0)
    assert choose_partial(100, {stable: 100}) == (stable, 100)  # complete, renamed after the hash check


def test_plan_bytes_needed_counts_only_missing_bytes() -> None:
    files = [lfs_file(100, "c" * 64), lfs_file(100, "d" * 64), lfs_file(100, "e" * 64)]
    files = [f.model_copy(update={"path": f"s{i}"}) for i, f in enumerate(files)]
    states = {
        "s0": BlobState(etag="c" * 64, blob_size=100, trusted=True),
        "s1": BlobState(etag="d" * 64, partial_sizes={"d" * 64 + ".incomplete": 25}),
        "s2": BlobState(etag="e" * 64),
    }
    plan = make_plan(files, states)
    assert [p.action for p in plan.files] == ["reuse", "resume", "download"]
    assert plan.bytes_needed == 75 + 100


def test_manifest_trust_requires_same_etag_size_and_mtime() -> None:
    f = lfs_file()
    entry = ManifestFile(size=100, etag=SHA, lfs=True, sha256=SHA, mtime_ns=7)
    assert is_trusted(f, 100, 7, entry)
    assert not is_trusted(f, 100, 8, entry)  # touched since the verified run
    assert not is_trusted(f, 99, 7, entry)
    assert not is_trusted(f, 100, 7, None)
    assert not is_trusted(lfs_file(etag="f" * 64), 100, 7, entry)


# -- huggingface_hub compatibility --------------------------------------------------------------
def test_orphan_name_matches_huggingface_hub_2_4() -> None:
    # file_download._download_to_tmp_and_move: incomplete_path = blob_path + ".incomplete", then
    # tmp_path = incomplete_path.with_name(f"{incomplete_path.stem}.{uuid.uuid4().hex[:8]}.incomplete")
    for etag in (SHA, GIT):
        incomplete_path = Path(f"/c/blobs/{etag}.incomplete")
        tmp_path = incomplete_path.with_name(f"{incomplete_path.stem}.{uuid.uuid4().hex[:8]}.incomplete")
        assert HF_ORPHAN_RE.match(tmp_path.name)
        assert is_hf_orphan(tmp_path.name, etag)
        assert not is_hf_orphan(tmp_path.name, "0" * len(etag))
    assert not HF_ORPHAN_RE.match(f"{SHA}.incomplete")


def test_git_blob_sha1_matches_huggingface_hub() -> None:
    data = os.urandom(5000)
    h = GitBlobSha1(len(data))
    h.update(data[:123])
    h.update(data[123:])
    assert h.hexdigest() == git_hash(data)


def test_cache_layout_links_relative_and_ref_without_newline(tmp_path: Path) -> None:
    cache = RepoCache(tmp_path, "Qwen/Qwen3-32B-FP8")
    assert cache.folder.name == "models--Qwen--Qwen3-32B-FP8"
    assert cache.lock(SHA) == tmp_path / ".locks" / "models--Qwen--Qwen3-32B-FP8" / f"{SHA}.lock"
    cache.blobs.mkdir(parents=True)
    cache.blob(SHA).write_bytes(b"x")
    commit = "c" * 40
    assert cache.link(commit, "sub/dir/model.safetensors", SHA)
    assert not cache.link(commit, "sub/dir/model.safetensors", SHA)  # idempotent
    pointer = cache.pointer(commit, "sub/dir/model.safetensors")
    assert os.readlink(pointer) == f"../../../../blobs/{SHA}"
    assert pointer.read_bytes() == b"x"
    cache.write_ref("main", commit)
    assert (cache.refs / "main").read_bytes() == commit.encode()
    assert cache.read_ref("main") == commit and cache.read_ref(commit) == commit and cache.read_ref("dev") is None


def test_default_patterns_cover_what_vllm_reads() -> None:
    from huggingface_hub.utils import filter_repo_objects

    repo = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "model-00001-of-00007.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "LICENSE",
        "README.md",
        ".gitattributes",
        "pytorch_model.bin",
        "original/consolidated.00.pth",
    ]
    kept = set(filter_repo_objects(repo, allow_patterns=list(DEFAULT_ALLOW_PATTERNS)))
    assert kept == set(repo) - {"pytorch_model.bin", "original/consolidated.00.pth"}


def test_manifest_roundtrip_and_merge(tmp_path: Path) -> None:
    cache = RepoCache(tmp_path, "Qwen/Qwen3-32B-FP8")
    commit = "d" * 40
    listing = RepoListing(
        repo_id=cache.repo_id, revision="main", commit=commit, files=[], source="hub", endpoint="https://huggingface.co"
    )
    a = ManifestFile(size=1, etag=SHA, lfs=True, sha256=SHA, mtime_ns=1)
    b = ManifestFile(size=2, etag=GIT, lfs=False, sha256="9" * 64, git_sha1=GIT, mtime_ns=2)
    save_manifest(cache, listing, {"a": a})
    path = save_manifest(cache, listing, {"b": b})
    assert path == cache.folder / "staging" / f"{commit}.json"
    m = load_manifest(cache, commit)
    assert m is not None and m.files == {"a": a, "b": b} and m.revisions == ["main"]
    assert {f.path for f in m.remote_files()} == {"a", "b"}
    path.write_text("{not json")
    assert load_manifest(cache, commit) is None  # unreadable -> blobs are re-hashed, never trusted


# -- retries ------------------------------------------------------------------------------------
def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 01 Jan 2030 00:00:10 GMT", now=1893456000.0) == pytest.approx(10.0)
    assert parse_retry_after("Thu, 01 Jan 2015 00:00:10 GMT") == 0.0


def test_backoff_is_exponential_capped_and_honours_retry_after() -> None:
    assert [backoff_delay(n, 0.5, 4.0, None, 60) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(1, 0.5, 4.0, 30.0, 60) == 30.0
    assert backoff_delay(1, 0.5, 4.0, 3600.0, 60) == 60


def test_content_range_parsing() -> None:
    assert parse_content_range("bytes 100-199/200") == (100, 200)
    assert parse_content_range("bytes 5-9/*") == (5, None)
    assert parse_content_range(None) is None and parse_content_range("items 1-2/3") is None


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "GatedRepo", "gated"),
        (403, "GatedRepo", "gated"),
        (401, "RepoNotFound", "auth"),
        (404, "RepoNotFound", "repo-not-found"),
        (404, "RevisionNotFound", "revision-not-found"),
        (404, "EntryNotFound", "entry-not-found"),
        (401, None, "auth"),
        (403, None, "forbidden"),
        (404, None, "repo-not-found"),
        (429, None, "transient"),
        (503, None, "transient"),
        (500, None, "transient"),
        (408, None, "transient"),
        (400, None, "http"),
    ],
)
def test_classify_response(status: int, code: str | None, kind: str) -> None:
    assert classify_response(status, {"X-Error-Code": code} if code else {}) == kind


def test_access_errors_say_what_to_do() -> None:
    ctx = dict(
        repo_id="Qwen/Qwen3-32B-FP8",
        revision="main",
        endpoint="https://huggingface.co",
        token_help="set one in Prefect Secret block 'hf-token', environment HF_TOKEN",
    )
    gated = access_error("gated", has_token=True, **ctx)
    assert isinstance(gated, errors.GatedRepoError)
    assert "https://huggingface.co/Qwen/Qwen3-32B-FP8" in str(gated) and "Accept the license" in str(gated)
    auth = access_error("auth", has_token=False, **ctx)
    assert isinstance(auth, errors.HubAuthError) and "hf-token" in str(auth) and "no token" in str(auth)
    rejected = access_error("auth", has_token=True, **ctx)
    assert "rejected" in str(rejected)
    missing = access_error("repo-not-found", has_token=True, **ctx)
    assert isinstance(missing, errors.RepoNotFoundError) and "Check the repo id" in str(missing)
    rev = access_error("revision-not-found", has_token=True, **{**ctx, "revision": "v9"})
    assert isinstance(rev, errors.RevisionNotFoundError) and "'v9'" in str(rev)
    assert not any(e.retryable for e in (gated, auth, missing, rev))


# -- preflight ----------------------------------------------------------------------------------
def test_disk_preflight_names_both_numbers() -> None:
    check_space(1000, 10**9, Path("/opt/hf"), disk_margin_for(1000))  # fits: no error
    with pytest.raises(errors.DiskSpaceError) as exc:
        check_space(30 * 2**30, 8 * 2**30, Path("/opt/hf"), disk_margin_for(30 * 2**30))
    msg = str(exc.value)
    required = 30 * 2**30 + disk_margin_for(30 * 2**30)
    assert str(required) in msg and str(8 * 2**30) in msg and "/opt/hf" in msg
    assert exc.value.needed == required and exc.value.free == 8 * 2**30
    assert disk_margin_for(0) == 0 and disk_margin_for(10) == 64 * 2**20 and disk_margin_for(100 * 2**30) == 2**30


# -- progress -----------------------------------------------------------------------------------
def test_progress_counts_and_keys() -> None:
    p = Progress(total_bytes=200, done_bytes=50, key="k", description="d", artifact=False, bar=False)
    p.start()
    p.add(50)
    assert p.percent() == 50.0
    p.add(-100)  # a restart takes its prefix back out
    assert p.percent() == 0.0
    p.close()
    assert artifact_key("staging-progress", "Qwen/Qwen3-32B-FP8") == "staging-progress-qwen-qwen3-32b-fp8"


# -- secrets ------------------------------------------------------------------------------------
def test_load_secret_order_env_then_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("# runbook\nexport OTHER=1\nHF_TOKEN='hf_from_dotenv'  \nVLLM_API_KEY=key # comment\n")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    got = load_secret(None, ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), dotenv)
    assert got is not None and got.get_secret_value() == "hf_from_dotenv"
    assert "hf_from_dotenv" not in repr(got) and "hf_from_dotenv" not in str(got)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_from_env")
    assert load_secret(None, ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), dotenv).get_secret_value() == "hf_from_env"
    assert read_dotenv(dotenv, ("VLLM_API_KEY",)) == ("VLLM_API_KEY", "key")
    assert load_secret(None, ("NOPE",), tmp_path / "missing.env") is None


def test_hashers_digest_like_hashlib() -> None:
    from tasks.staging.cache import Hashers

    data = b"hello world" * 1000
    h = Hashers(len(data), git=True)
    h.update(data)
    assert h.digest("sha256") == hashlib.sha256(data).hexdigest()
    assert h.digest("git-sha1") == git_hash(data)
