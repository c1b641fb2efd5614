"""Local imitation of the Hugging Face Hub (standard library only).

    from sim.hub import HubServer, RepoSpec, Faults

    spec = RepoSpec(repo_id="Qwen/Qwen3-32B-FP8", n_shards=7, shard_bytes=4 * 1024 * 1024)
    with HubServer(repos=[spec], data_dir=Path("/tmp/hub"), token=None) as hub:
        os.environ["HF_ENDPOINT"] = hub.url   # before huggingface_hub is imported
        ...

See docs/imitations.md ("The Hub imitation (`sim.hub`)") for what it serves, its knobs, its faults and how it
differs from the real Hub.
"""

from .faults import Faults
from .repo import REAL_TOTAL_SIZE, RepoSpec
from .server import HubServer

__all__ = ["HubServer", "RepoSpec", "Faults", "REAL_TOTAL_SIZE"]
