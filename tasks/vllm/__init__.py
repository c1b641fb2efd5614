"""What the project knows about vLLM itself: its log grammar, its failures, its metrics, its API.

Everything here is a fact about vLLM, cited to the vLLM file and line it comes from; the flows and
tasks around it decide what to do with those facts.
"""
