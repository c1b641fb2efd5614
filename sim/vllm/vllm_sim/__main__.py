"""`python3 -m vllm_sim ...` == the `vllm` command inside the imitation image."""

import sys

from .cli import main

sys.exit(main())
