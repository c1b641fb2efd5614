"""The real huggingface_hub (2.4) against the imitation: downloads, cache, listing, error classes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hub_fixtures import (  # noqa: F401  (fixtures are used by name)
    GATED,
    PRIVATE,
    REPO_ID,
    TOKEN,
    VENV_BIN,
    api,
    client_env,
    hub,
    hub_data_dir,
    hub_server,
    run_hf,
    token_hub,
)
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from sim.hub import HubServer


def _assert_cache_matches(hub: HubServer, cache: Path, snapshot: str) -> None:
    """refs/main, blobs named by ETag, relative snapshot symlinks, bytes identical to the Hub's."""
    commit = hub.commit(REPO_ID)
    storage = cache / "models--Qwen--Qwen3-32B-FP8"
    assert Path(snapshot) == storage / "snapshots" / commit
    assert (storage / "refs" / "main").read_text() == commit
    for path, size, etag, _lfs in hub.files(REPO_ID):
        link = storage / "snapshots" / commit / path
        assert link.is_symlink() and os.readlink(link) == f"../../blobs/{etag}"
        blob = storage / "blobs" / etag
        assert blob.stat().st_size == size
        assert blob.read_bytes() == hub.local_path(REPO_ID, path).read_bytes()
    assert not list((storage / "blobs").glob("*.incomplete"))


def test_snapshot_download_verify_scan_offline(hub: HubServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    out = run_hf(
        f"""
        import json
        from huggingface_hub import HfApi, snapshot_download, scan_cache_dir, constants
        path = snapshot_download("{REPO_ID}", cache_dir="{cache}")
        v = HfApi().verify_repo_checksums("{REPO_ID}", revision="main", cache_dir="{cache}")
        scan = scan_cache_dir("{cache}")
        (repo,) = scan.repos
        offline = snapshot_download("{REPO_ID}", cache_dir="{cache}", local_files_only=True)
        print(json.dumps(dict(
            endpoint=constants.ENDPOINT, path=path, offline=offline,
            checked=v.checked_count, mismatches=[m.path for m in v.mismatches],
            missing=v.missing_paths, extra=v.extra_paths, revision=v.revision,
            warnings=[str(w) for w in scan.warnings], repo_id=repo.repo_id, nb_files=repo.nb_files,
            revisions=[r.commit_hash for r in repo.revisions], refs=sorted(repo.refs),
            incomplete=len(scan.incomplete_files) if hasattr(scan, "incomplete_files") else 0,
        )))
        """,
        hub.url,
        tmp_path / "hf_home",
    )
    commit = hub.commit(REPO_ID)
    assert out["endpoint"] == hub.url
    assert out["path"] == out["offline"]
    assert out["checked"] == len(hub.files(REPO_ID)) == 17
    assert out["mismatches"] == out["missing"] == out["extra"] == []
    assert out["revision"] == commit
    assert out["warnings"] == [] and out["incomplete"] == 0
    assert out["repo_id"] == REPO_ID and out["revisions"] == [commit] and out["refs"] == ["main"]
    _assert_cache_matches(hub, cache, out["path"])
    # the client stayed on plain HTTP: every LFS body came from the CDN origin, after a 302
    stats = hub.stats()
    assert stats["status"].get("302") == 8  # 7 shards + tokenizer.json
    assert sum(1 for k in stats["requests"] if k.startswith("GET cdn:/repos/")) == 8
    assert stats["bytes_served"][f"{REPO_ID}/model-00001-of-00007.safetensors"] == 256 * 1024


def test_hf_download_cli(hub: HubServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = client_env(hub.url, tmp_path / "hf_home")
    proc = subprocess.run(
        [str(VENV_BIN / "hf"), "download", REPO_ID, "--cache-dir", str(cache), "--format", "quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    _assert_cache_matches(hub, cache, proc.stdout.strip().splitlines()[-1])
    v = api(hub).verify_repo_checksums(REPO_ID, revision="main", cache_dir=cache)
    assert v.checked_count == 17 and not (v.mismatches or v.missing_paths or v.extra_paths)


def test_model_info_tree_paths_info_refs(hub: HubServer) -> None:
    a = api(hub)
    info = a.model_info(REPO_ID, files_metadata=True)
    assert info.id == REPO_ID and info.sha == hub.commit(REPO_ID)
    assert info.private is False and info.gated is False and info.last_modified is not None
    expected = {p: (size, etag, lfs) for p, size, etag, lfs in hub.files(REPO_ID)}
    assert {s.rfilename for s in info.siblings} == set(expected)
    for s in info.siblings:
        size, etag, lfs = expected[s.rfilename]
        assert s.size == size
        assert (s.lfs.sha256 if lfs else s.blob_id) == etag
        assert (s.lfs is not None) == lfs
    plain = a.model_info(REPO_ID)
    assert plain.siblings[0].size is None
    assert a.model_info(REPO_ID, revision=hub.commit(REPO_ID)).sha == hub.commit(REPO_ID)
    assert info.safetensors.total == 32_764_027_904

    hub.tree_page_size = 5
    hub.reset_stats()
    tree = list(a.list_repo_tree(REPO_ID, recursive=True))
    assert {f.path: (f.size, f.lfs.sha256 if f.lfs else f.blob_id) for f in tree} == {
        p: (v[0], v[1]) for p, v in expected.items()
    }
    assert all(f.xet_hash is None for f in tree)  # keeps clients off Xet
    assert hub.stats()["requests"][f"GET /api/models/{REPO_ID}/tree/main"] == 4  # 17 files / 5 per page

    expanded = list(a.list_repo_tree(REPO_ID, expand=True))
    assert expanded[0].last_commit.oid == hub.commit(REPO_ID) and expanded[0].security.safe

    paths = a.get_paths_info(REPO_ID, ["config.json", "model-00002-of-00007.safetensors", "nope"])
    assert sorted(p.path for p in paths) == ["config.json", "model-00002-of-00007.safetensors"]
    refs = a.list_repo_refs(REPO_ID)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", hub.commit(REPO_ID))]
    assert a.file_exists(REPO_ID, "config.json") and not a.file_exists(REPO_ID, "nope.bin")
    assert a.repo_exists(REPO_ID) and not a.repo_exists("nobody/nothing")
    assert a.revision_exists(REPO_ID, "main") and not a.revision_exists(REPO_ID, "v9")
    assert a.get_safetensors_metadata(REPO_ID).sharded


def test_error_classes_match_the_real_hub(hub: HubServer, tmp_path: Path) -> None:
    a = api(hub)
    with pytest.raises(RepositoryNotFoundError):
        a.model_info("nobody/nothing")
    with pytest.raises(RepositoryNotFoundError) as e:
        hf_hub_download("nobody/nothing", "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert e.value.response.headers["X-Error-Code"] == "RepoNotFound"
    with pytest.raises(RevisionNotFoundError):
        a.model_info(REPO_ID, revision="v9.9")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO_ID, "config.json", revision="v9.9", endpoint=hub.url, cache_dir=tmp_path, token=False)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO_ID, "nope.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    # the client cached the non-existence under the commit it got in X-Repo-Commit
    assert (tmp_path / "models--Qwen--Qwen3-32B-FP8" / ".no_exist" / hub.commit(REPO_ID) / "nope.json").exists()
    # private: anonymous callers cannot tell it from a missing repo; any token is valid with token=None
    with pytest.raises(RepositoryNotFoundError):
        a.model_info(PRIVATE.repo_id)
    assert api(hub, token="hf_anything").model_info(PRIVATE.repo_id).private is True


def test_gated_repo(hub: HubServer, tmp_path: Path) -> None:
    # metadata is public, files are not
    assert api(hub).model_info(GATED.repo_id).gated == "manual"
    with pytest.raises(GatedRepoError) as anon:
        hf_hub_download(GATED.repo_id, "config.json", endpoint=hub.url, cache_dir=tmp_path, token=False)
    assert anon.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as not_accepted:
        snapshot_download(GATED.repo_id, endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
    assert not_accepted.value.response.status_code == 403
    hub.accept_gate(GATED.repo_id, TOKEN)
    path = snapshot_download(GATED.repo_id, endpoint=hub.url, cache_dir=tmp_path, token=TOKEN)
    assert (Path(path) / "model-00002-of-00002.safetensors").stat().st_size == 256 * 1024
    with pytest.raises(GatedRepoError):  # accepted for that token only
        hf_hub_download(GATED.repo_id, "config.json", endpoint=hub.url, cache_dir=tmp_path / "x", token="hf_other")


def test_token_required(token_hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError) as anon:
        api(token_hub).model_info(REPO_ID)
    assert anon.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO_ID, "config.json", endpoint=token_hub.url, cache_dir=tmp_path, token=False)
    # A wrong token: the real Hub's 401 "Invalid credentials", which the client does not map to
    # RepositoryNotFoundError but raises as a plain HfHubHTTPError (on hf_hub_download too).
    with pytest.raises(HfHubHTTPError) as wrong:
        api(token_hub, token="hf_wrong").model_info(REPO_ID)
    assert wrong.value.response.status_code == 401
    assert not isinstance(wrong.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError) as wrong_dl:
        hf_hub_download(REPO_ID, "config.json", endpoint=token_hub.url, cache_dir=tmp_path, token="hf_wrong")
    assert wrong_dl.value.response.status_code == 401
    assert api(token_hub, token=TOKEN).model_info(REPO_ID).sha == token_hub.commit(REPO_ID)
    assert api(token_hub, token=TOKEN).whoami()["name"] == "sim-user"
    # the same through the environment, as staging runs it
    out = run_hf(
        f"""
        import json
        from huggingface_hub import snapshot_download
        p = snapshot_download("{REPO_ID}", cache_dir="{tmp_path / "c"}")
        print(json.dumps({{"path": p}}))
        """,
        token_hub.url,
        tmp_path / "hf_home",
        token=TOKEN,
    )
    assert out["path"].endswith(token_hub.commit(REPO_ID))


def test_client_does_not_send_its_token_to_the_cdn(token_hub: HubServer, tmp_path: Path) -> None:
    """The CDN needs no token (signed URL); the client drops Authorization for another origin."""
    token_hub.reset_stats()
    path = hf_hub_download(
        REPO_ID, "model-00003-of-00007.safetensors", endpoint=token_hub.url, cache_dir=tmp_path, token=TOKEN
    )
    assert Path(path).stat().st_size == 256 * 1024
    stats = token_hub.stats()
    assert any(k.startswith("GET cdn:") for k in stats["requests"])
    assert stats["cdn_requests_with_authorization"] == 0
