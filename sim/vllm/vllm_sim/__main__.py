"""`python3 -m vllm_sim ...`: the `vllm` command, plus the imitated machine's own commands.

`python3 -m vllm_sim meminfo` and `python3 -m vllm_sim hold --gib N` (machine.py) stand for the
machine; everything else is vLLM's CLI.  The image's `vllm` command does not take them
(vllm_command.py): `vllm meminfo` fails as it does with the real vLLM.
"""

import sys

if len(sys.argv) > 1 and sys.argv[1] in ("meminfo", "hold"):
    from .machine import main as machine_main

    sys.exit(machine_main(sys.argv[1:]))

from .cli import main

sys.exit(main())
