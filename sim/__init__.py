"""Test equipment and demo engine: imitations of what these machines lack (a GPU vLLM server, the Hub).

Never used on the Spark path: a real target points at the NVIDIA image and the real Hub with the
same flows and other settings.
"""
