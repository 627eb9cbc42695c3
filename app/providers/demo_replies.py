"""What the built-in demo models say: pure functions of the prompt, no LiteLLM, no clock.

``demo`` answers in markdown (a heading, a list, a code block, a table) built from the prompt, so the
chat page's rendering can be seen without a provider key; ``demo-slow`` is long enough to try Stop,
resume and drain on; ``demo-error`` fails the two ways providers do (see ``error_plan``).
The prompt is untrusted text: it is quoted inside the markdown with the characters that would end a
code span, a code block or a table cell neutralised, and it is cut to a bounded length.
"""

from __future__ import annotations

import re
from typing import Any, Literal

#: Characters of the prompt quoted back; a long paste is not repeated in full.
MAX_QUOTED = 200
#: Words of the prompt shown in the table.
MAX_TABLE_ROWS = 5
#: Paragraphs of demo-slow's answer (about 12 tokens each).
SLOW_PARAGRAPHS = 10
#: demo-error's in-band failure comes after this many tokens.
ERROR_AFTER_TOKENS = 12
#: The word that makes demo-error fail after its first tokens rather than before them.
MIDWAY_WORD = "midway"

_TOKEN_RE = re.compile(r"\s*\S+")
_WORD_RE = re.compile(r"[^\W_]+(?:['\u2019-][^\W_]+)*")


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def tokens_of(text: str) -> list[str]:
    """Word-sized tokens whose concatenation is the text (newlines kept, so the markdown survives)."""
    return _TOKEN_RE.findall(text)


def _said(messages: list[Any]) -> str:
    return " ".join(last_user_text(messages).split())[:MAX_QUOTED]


def _inline(text: str) -> str:
    # Inside a `code span`: a backtick would end it, so it becomes a straight quote.
    return text.replace("`", "'")


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("`", "'")


def markdown_reply(messages: list[Any]) -> str:
    said = _said(messages)
    words = _WORD_RE.findall(said)
    rows = "\n".join(
        f"| {_cell(w)} | {len(w)} | {sum(c.lower() in 'aeiou' for c in w)} |" for w in words[:MAX_TABLE_ROWS]
    )
    table = (
        "| word | letters | vowels |\n| --- | ---: | ---: |\n" + rows
        if rows
        else "| word | letters | vowels |\n| --- | ---: | ---: |\n| (none) | 0 | 0 |"
    )
    quoted = _inline(said) or "nothing"
    return (
        "## A demo answer\n\n"
        f"You said `{quoted}`: {len(words)} word{'s' * (len(words) != 1)}, {len(said)} characters. "
        "I am the gateway's built-in demo model: no provider key, no network, "
        "one token every few milliseconds through the same stream pipeline as a real provider.\n\n"
        "What this answer shows:\n\n"
        "1. a heading, **bold** and `inline code`\n"
        "2. a numbered list (this one)\n"
        "3. a code block and a table, below\n\n"
        "```python\n"
        f"prompt = {said!r}\n"
        "print(len(prompt.split()), 'words')\n"
        "```\n\n"
        f"{table}\n\n"
        "Try `demo-slow` for a long answer to stop or resume, and `demo-error` to see failures."
    )


def slow_reply(messages: list[Any]) -> str:
    said = _inline(_said(messages)) or "nothing"
    parts = [
        f"## A long answer\n\nYou said `{said}`. This answer is paced so that there is time to press **Stop**, "
        "reload the page mid-answer, or stop the server and watch the stream end cleanly.\n"
    ]
    for n in range(1, SLOW_PARAGRAPHS + 1):
        parts.append(
            f"{n}. Paragraph {n} of {SLOW_PARAGRAPHS}: each word arrives on its own, so a resumed stream "
            "carries on from the word it had reached."
        )
    parts.append("\nThat was the whole answer.")
    return "\n".join(parts)


ErrorPlan = Literal["before_first_token", "midway"]


def error_plan(messages: list[Any]) -> ErrorPlan:
    """How ``demo-error`` fails: before its first token (a 429 the client sees as an HTTP status), or,
    when the prompt contains the word ``midway``, after a few tokens (an in-band error)."""
    return "midway" if MIDWAY_WORD in last_user_text(messages).lower() else "before_first_token"


def error_preamble() -> list[str]:
    return tokens_of("This answer starts well and then the provider's connection breaks off, right")[
        :ERROR_AFTER_TOKENS
    ]


def prompt_tokens(messages: list[Any]) -> int:
    return sum(len(last_user_text([m]).split()) for m in messages) or 1
