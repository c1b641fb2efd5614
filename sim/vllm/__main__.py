"""Host entry: `python -m sim.vllm serve MODEL ...` behaves as the image's `vllm` command."""

import sys

from .vllm_sim.cli import main

sys.exit(main())
