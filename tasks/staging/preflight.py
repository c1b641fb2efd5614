"""Disk preflight: bytes still needed plus a margin, against free space, before a byte moves.

huggingface_hub only warns per file and never sums the shards; a 32 GB model on a disk with 20 GB
free then fails hours later with ENOSPC and leaves partials behind. Here the whole remainder is
checked up front and the error names both numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DiskSpaceError
from .plan import binary_size

MARGIN_FRACTION = 0.01  # of the bytes still needed
MARGIN_MIN = 64 * 1024 * 1024  # filesystem overhead, the manifest, a concurrent writer's slack


def disk_margin_for(needed: int, fraction: float = MARGIN_FRACTION, minimum: int = MARGIN_MIN) -> int:
    if needed <= 0:
        return 0
    return max(int(needed * fraction), minimum)


def existing_ancestor(path: Path) -> Path:
    """The cache dir, or its nearest existing parent (the cache may not exist yet)."""
    p = Path(path).absolute()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s filesystem (statvfs f_bavail)."""
    st = os.statvfs(existing_ancestor(path))
    return st.f_bavail * st.f_frsize


def check_space(needed: int, free: int, where: Path, margin: int) -> None:
    """Raise ``DiskSpaceError`` when ``needed + margin > free``; pure (numbers in, error out)."""
    if needed <= 0:
        return
    required = needed + margin
    if required <= free:
        return
    short = required - free
    raise DiskSpaceError(
        f"Not enough disk space for staging in {where}: {binary_size(required)} required "
        f"({needed} bytes still to download + {margin} bytes margin = {required} bytes) but only "
        f"{binary_size(free)} ({free} bytes) free on that filesystem. Nothing was downloaded. "
        f"Free at least {binary_size(short)} (e.g. `hf cache ls --cache-dir {where}` then `hf cache rm ...` "
        f"for models no longer served) or set cache_dir to a larger disk.",
        needed=required,
        free=free,
    )


def require_free_space(needed: int, cache_dir: Path) -> tuple[int, int]:
    """Check the real filesystem; returns (required incl. margin, free)."""
    margin = disk_margin_for(needed)
    free = free_bytes(cache_dir)
    check_space(needed, free, Path(cache_dir), margin)
    return needed + margin, free
