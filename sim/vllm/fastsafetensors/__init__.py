"""The image's `fastsafetensors` package: importable, as in an image that ships it (/opt/fastsafetensors).

The product learns at deploy time whether `import fastsafetensors` works inside the image (vLLM's
`--load-format fastsafetensors` needs it: vllm/model_executor/model_loader/weight_utils.py:47-53 in
0.10.1.1; a dependency of the 0.31.0 wheel). This stub has no API: the imitation's server only asks
the same knob. `VLLM_SIM_NO_FASTSAFETENSORS=1` hides it: the import fails as for a missing package.
Standard library only.
"""

import os

if os.environ.get("VLLM_SIM_NO_FASTSAFETENSORS", "").strip().lower() in ("1", "true", "yes", "on"):
    raise ModuleNotFoundError("No module named 'fastsafetensors'", name="fastsafetensors")

__version__ = "0.1.10"  # the least vLLM 0.10.1.1's extra asks (fastsafetensors>=0.1.10)
