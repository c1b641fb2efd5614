"""The image's `/usr/local/bin/vllm`: `exec python3 -m vllm_sim.vllm_command "$@"`, vLLM's CLI only.

Kept apart from `python3 -m vllm_sim` so that the imitation's own commands (`meminfo`, `hold`)
are not subcommands of `vllm`: `vllm meminfo` fails with argparse's invalid-choice error, exit 2,
as with vLLM 0.10.1.1.
"""

import sys

from .cli import main

sys.exit(main())
