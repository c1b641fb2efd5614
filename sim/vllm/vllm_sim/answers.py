"""Deterministic model output and an approximate tokenizer.

Why: smoke tests ask real questions ("What is 12*17?") and check the answer, and
token counts drive usage, metrics and decode time.  There is no model here, so:

* Tokenizer: a piece is optional leading whitespace plus up to 4 non-space
  characters (roughly BPE's ~4 chars/token on English); `<think>`/`</think>` are
  single tokens as in Qwen3.  Concatenating the pieces gives the text back, so
  streamed deltas add up to the full answer.
* Arithmetic on two integers (+ - * x × / ÷, or the words plus/minus/times/divided
  by) is answered correctly; anything else gets a generic filler paragraph whose
  choice and length depend only on the prompt (temperature is ignored).
* Chat output starts with a short Qwen3 `<think>` block unless
  `chat_template_kwargs.enable_thinking` is false.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from fractions import Fraction

_TOKEN_RE = re.compile(r"</?think>|\s+(?=</?think>)|\s*[^\s<]{1,4}|\s*<|\s+")
_ARITH_RE = re.compile(
    r"(-?\d+)\s*(\+|-|\*|x|×|/|÷|plus|minus|times|multiplied by|divided by|over)\s*(-?\d+)",
    re.IGNORECASE,
)
_OPS = {
    "+": "+",
    "plus": "+",
    "-": "-",
    "minus": "-",
    "*": "*",
    "x": "*",
    "×": "*",
    "times": "*",
    "multiplied by": "*",
    "/": "/",
    "÷": "/",
    "divided by": "/",
    "over": "/",
}
_FILLER = (
    "Here is a clear and structured answer to your question.",
    "The key idea is to break the problem into smaller parts and look at each one in turn.",
    "First, it helps to define the terms precisely, because most confusion comes from vague words.",
    "Second, consider how the parts interact, since the whole often behaves differently from its pieces.",
    "A simple example makes this concrete: imagine a small system with only a few moving parts.",
    "In practice, the trade-off is between speed and accuracy, and the right balance depends on the goal.",
    "It is also worth noting the common pitfalls, which usually come from hidden assumptions.",
    "Measuring the result, rather than guessing, is the most reliable way to know whether it works.",
    "Finally, the same reasoning applies to larger cases, with more care for the details.",
    "In summary, start simple, check each step, and refine the approach as you learn more.",
)


def tokenize(text: str) -> list[str]:
    """Split `text` into approximate tokens whose concatenation is `text`."""
    return _TOKEN_RE.findall(text)


def count_tokens(text: str) -> int:
    return len(tokenize(text))


def _message_text(content: object) -> str:
    """Chat content is a string or a list of parts ({"type": "text", "text": ...})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def chat_prompt_pieces(messages: Sequence[dict], enable_thinking: bool = True) -> list[str]:
    """The rendered Qwen3 chat template as pieces: each message is
    `<|im_start|>role\n content <|im_end|>\n`, then `<|im_start|>assistant\n`
    (plus an empty think block when thinking is disabled)."""
    pieces: list[str] = []
    for msg in messages:
        pieces += ["<|im_start|>", str(msg.get("role", "user")), "\n"]
        pieces += tokenize(_message_text(msg.get("content")))
        pieces += ["<|im_end|>", "\n"]
    pieces += ["<|im_start|>", "assistant", "\n"]
    if not enable_thinking:
        pieces += ["<think>", "\n\n", "</think>", "\n\n"]
    return pieces


def last_user_text(messages: Sequence[dict]) -> str:
    for msg in reversed(messages):
        if msg.get("role") == "user":
            return _message_text(msg.get("content"))
    return _message_text(messages[-1].get("content")) if messages else ""


def _fmt(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def arithmetic(text: str) -> str | None:
    """'What is 12*17?' -> '12 * 17 = 204' (the last integer expression in the text)."""
    matches = list(_ARITH_RE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    a, b = int(m.group(1)), int(m.group(3))
    op = _OPS[m.group(2).lower()]
    if op == "+":
        result = Fraction(a + b)
    elif op == "-":
        result = Fraction(a - b)
    elif op == "*":
        result = Fraction(a * b)
    else:
        if b == 0:
            return f"{a} / {b} is undefined: division by zero."
        result = Fraction(a, b)
    return f"{a} {op} {b} = {_fmt(result)}"


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def filler(prompt: str) -> str:
    """A generic paragraph, 120-400 tokens, chosen and sized by the prompt alone."""
    seed = _digest(prompt)
    target = 120 + seed % 281
    start = seed % len(_FILLER)
    parts: list[str] = []
    i = 0
    while count_tokens(" ".join(parts)) < target:
        parts.append(_FILLER[(start + i) % len(_FILLER)])
        i += 1
    return " ".join(parts)


def answer(prompt: str) -> str:
    """The final answer to a prompt: arithmetic when there is some, filler otherwise."""
    arith = arithmetic(prompt)
    return f"{arith}." if arith else filler(prompt)


def thinking(prompt: str) -> str:
    """Qwen3's short reasoning block that precedes the answer when thinking is on."""
    arith = arithmetic(prompt)
    thought = (
        f"The user asks for a calculation. Computing it: {arith}."
        if arith
        else "The user wants a clear explanation. I will answer in a few structured sentences."
    )
    return f"<think>\n{thought}\n</think>\n\n"


def chat_output(messages: Sequence[dict], enable_thinking: bool = True) -> str:
    prompt = last_user_text(messages)
    arith = arithmetic(prompt)
    final = (
        f"{arith.rsplit(' = ', 1)[0]} = **{arith.rsplit(' = ', 1)[1]}**" if arith and " = " in arith else answer(prompt)
    )
    return (thinking(prompt) if enable_thinking else "") + final


def completion_output(prompt: str) -> str:
    """Continue a raw prompt with its answer."""
    return " " + answer(prompt)
