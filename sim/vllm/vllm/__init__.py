"""The image's `vllm` package: what `import vllm; print(vllm.__version__)` answers.

The product learns which vLLM an image runs from a throwaway container of it
(tasks/vllm/versions.py VERSION_PROBE), as NVIDIA's images answer from vllm/version.py:5
(`from ._version import __version__`). Here the answer is the imitation's own version:
VLLM_SIM_VERSION (set by the image variants, sim/image.py) or the default, 25.09's
`0.10.1.1+381074ae.nv25.09`. Nothing else of vLLM's API exists. Copied to /opt/vllm;
standard library only.
"""

import os

from vllm_sim.versions import DEFAULT_VERSION

__version__ = os.environ.get("VLLM_SIM_VERSION", "").strip() or DEFAULT_VERSION
