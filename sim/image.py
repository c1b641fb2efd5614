"""Build the vLLM imitation's docker image without any registry.

No registry is reachable here, so the base image is made from the machine's own apt sources with
``mmdebstrap`` and ``docker import`` (docs/imitations.md, introduction), and the imitation is built on top of it.
Each image carries a content label; a build is skipped when an image with the same label already exists, so a
second bootstrap on a ready machine takes well under a second. Besides ``SIM_IMAGE`` (vLLM 0.10.1.1) one variant
per other version of ``SIM_IMAGES`` is built as ``FROM SIM_IMAGE`` plus ``ENV VLLM_SIM_VERSION=<version>`` (a
layer of metadata only, about a second), so the image itself says its version as an NGC image does.

Usage: ``python -m sim.image ensure|check [--docker-host URL]``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import docker
from docker.errors import ImageNotFound

# The tag is the product's (the sim target runs it): sim may import the product, never the reverse.
from deployments.targets import SIM_IMAGE, SIM_IMAGES

CONTENT_LABEL = "org.spark-vllm.content"
BASE_IMAGE = "spark-vllm/sim-base:bookworm"
BASE_RECIPE = ("mmdebstrap", "--variant=apt", "--include=python3", "bookworm")
SIM_CONTEXT = Path(__file__).parent / "vllm"


def base_content_hash() -> str:
    """The base image is fully described by its mmdebstrap recipe."""
    return hashlib.sha256(" ".join(BASE_RECIPE).encode()).hexdigest()[:16]


def sim_content_hash(context: Path = SIM_CONTEXT) -> str:
    """Hash of every file the imitation's build context copies, plus the base recipe."""
    digest = hashlib.sha256(base_content_hash().encode())
    for path in sorted(p for p in context.rglob("*") if p.is_file()):
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        digest.update(str(path.relative_to(context)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _has_image(client: docker.DockerClient, tag: str, content: str) -> bool:
    try:
        image = client.images.get(tag)
    except ImageNotFound:
        return False
    return (image.labels or {}).get(CONTENT_LABEL) == content


def ensure_base_image(client: docker.DockerClient) -> str:
    """Create the python3-only Debian base image unless an identical one exists."""
    content = base_content_hash()
    if _has_image(client, BASE_IMAGE, content):
        return BASE_IMAGE
    with tempfile.TemporaryDirectory(prefix="sim-base-") as tmp:
        tarball = Path(tmp) / "base.tar"
        print(f"building {BASE_IMAGE} with mmdebstrap (about a minute)...", file=sys.stderr)
        subprocess.run([*BASE_RECIPE, str(tarball)], check=True, stdout=subprocess.DEVNULL)
        repository, tag = BASE_IMAGE.rsplit(":", 1)
        client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=tag,
            changes=[f"LABEL {CONTENT_LABEL}={content}", 'CMD ["python3"]'],
        )
    return BASE_IMAGE


def ensure_sim_image(client: docker.DockerClient) -> str:
    """Build the vLLM imitation on the base image unless the same content is already built, then its
    version variants (``ensure_variant_images``); returns ``SIM_IMAGE``."""
    content = sim_content_hash()
    if not _has_image(client, SIM_IMAGE, content):
        ensure_base_image(client)
        print(f"building {SIM_IMAGE}...", file=sys.stderr)
        client.images.build(
            path=str(SIM_CONTEXT),
            tag=SIM_IMAGE,
            buildargs={"BASE": BASE_IMAGE},
            labels={CONTENT_LABEL: content},
            rm=True,
            forcerm=True,
        )
    ensure_variant_images(client)
    return SIM_IMAGE


def variant_dockerfile(version: str) -> str:
    """The variant of ``SIM_IMAGE`` that speaks `version` (sim/vllm/vllm_sim/versions.py)."""
    return f"FROM {SIM_IMAGE}\nENV VLLM_SIM_VERSION={version}\n"


def variant_content_hash(version: str) -> str:
    """The base imitation's content plus the variant's Dockerfile."""
    return hashlib.sha256((sim_content_hash() + variant_dockerfile(version)).encode()).hexdigest()[:16]


def ensure_variant_images(client: docker.DockerClient) -> list[str]:
    """Build every ``SIM_IMAGES`` variant whose content changed (``SIM_IMAGE`` must exist)."""
    built = []
    for version, tag in SIM_IMAGES.items():
        if tag == SIM_IMAGE:
            continue
        content = variant_content_hash(version)
        if not _has_image(client, tag, content):
            print(f"building {tag} (VLLM_SIM_VERSION={version})...", file=sys.stderr)
            client.images.build(
                fileobj=io.BytesIO(variant_dockerfile(version).encode()),
                tag=tag,
                labels={CONTENT_LABEL: content},
                rm=True,
                forcerm=True,
            )
        built.append(tag)
    return built


def images_ready(client: docker.DockerClient) -> bool:
    variants = all(
        _has_image(client, tag, variant_content_hash(version))
        for version, tag in SIM_IMAGES.items()
        if tag != SIM_IMAGE
    )
    return _has_image(client, SIM_IMAGE, sim_content_hash()) and variants


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.image", description=__doc__)
    parser.add_argument("action", choices=["ensure", "check"])
    parser.add_argument("--docker-host", default=None, help="docker base URL (default: environment)")
    args = parser.parse_args(argv)
    client = docker.DockerClient(base_url=args.docker_host) if args.docker_host else docker.from_env()
    try:
        if args.action == "check":
            ready = images_ready(client)
            print("ready" if ready else "missing")
            return 0 if ready else 1
        print(ensure_sim_image(client))
        for tag in SIM_IMAGES.values():
            if tag != SIM_IMAGE:
                print(tag)
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    raise SystemExit(main())
