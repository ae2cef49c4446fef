"""The data files an experiment names, validated like the experiment file itself: prompt files,
attack suites (prompt-injection texts) and the price table.

Each format is a pydantic model with ``extra="forbid"`` (:class:`~.yamlfile.StrictModel`), so a
typo in a key is an error with a suggestion, never a silently ignored setting, and every problem is
one ``ConfigError`` line naming the file, the line and the field (``prompts/qa.yaml:3: user:
unknown placeholder {questoin} (did you mean 'question'?); allowed: {context}, {question}``).
Prompt files and attack suites are versioned by the sha256 of their bytes: the hash goes into run
ids, so editing a prompt makes a new run instead of silently changing an old one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo, field_validator, model_validator

from ..errors import did_you_mean
from .yamlfile import StrictModel, field_error, load_yaml_model

# -- prompt files ----------------------------------------------------------------------------------

PLACEHOLDERS = frozenset({"context", "question"})
JUDGE_PLACEHOLDERS = frozenset({"context", "question", "answer"})  # judge prompts also see the answer
PROMPT_MODES = ("chat", "completion")
TEMPLATE_KEYS = ("system", "user", "template")


def _placeholders(template: str, key: str, allowed: frozenset[str]) -> set[str]:
    """The ``{names}`` a template uses; a malformed template or an unknown name is an error on ``key``."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise field_error(key, f"malformed template ({exc}); write literal braces as {{{{ and }}}}") from None
    unknown = names - allowed
    if unknown:
        name = sorted(unknown)[0]
        listed = ", ".join("{" + a + "}" for a in sorted(allowed))
        raise field_error(key, f"unknown placeholder {{{name}}}{did_you_mean(name, allowed)}; allowed: {listed}")
    return names


class PromptFile(StrictModel):
    """A prompt file: ``mode: chat`` with ``system`` and ``user`` templates, or ``mode: completion``
    with one ``template``; optional ``stop`` strings. Validate it with
    ``context={"placeholders": ...}`` to require other names than ``{context}`` and ``{question}``."""

    mode: str
    description: str | None = None
    system: str | None = None
    user: str | None = None
    template: str | None = None
    stop: tuple[str, ...] = ()

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> str:
        if v not in PROMPT_MODES:
            raise ValueError(f"expected 'chat' or 'completion', got {v!r}")
        return v

    @field_validator("description", *TEMPLATE_KEYS, mode="before")
    @classmethod
    def _text(cls, v: Any) -> str | None:
        if v is not None and not isinstance(v, str):
            raise ValueError(f"expected text, got {type(v).__name__}")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> tuple[str, ...]:
        if v is None:
            return ()
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError("expected a list of strings")
        return tuple(v)

    @model_validator(mode="after")
    def _templates(self, info: ValidationInfo) -> PromptFile:
        needed = "user" if self.mode == "chat" else "template"
        if not (getattr(self, needed) or "").strip():
            raise field_error(needed, f"required for mode {self.mode!r}")
        for key in ("template",) if self.mode == "chat" else ("user", "system"):
            if getattr(self, key) is not None:
                raise field_error(key, f"not used in mode {self.mode!r}")
        required = (info.context or {}).get("placeholders", PLACEHOLDERS)
        found: set[str] = set()
        for key in TEMPLATE_KEYS:
            if getattr(self, key) is not None:
                found |= _placeholders(getattr(self, key), key, required)
        missing = required - found
        if missing:
            raise field_error(needed, f"the prompt never uses {', '.join('{' + m + '}' for m in sorted(missing))}")
        return self


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt file; ``content_hash`` (sha256 of the file's bytes) versions it."""

    path: Path
    mode: str  # "chat" | "completion"
    content_hash: str
    system: str | None = None
    user: str | None = None
    template: str | None = None
    stop: tuple[str, ...] = ()


def load_prompt(path: str | os.PathLike, placeholders: frozenset[str] = PLACEHOLDERS) -> Prompt:
    """Read and validate a prompt file; every problem is a one-line ConfigError.

    ``placeholders`` are the names the prompt must use, and the only ones it may use
    (``JUDGE_PLACEHOLDERS`` for judge prompts).
    """
    path = Path(path)
    raw, f = load_yaml_model(PromptFile, path, "prompt file", "with mode and templates", {"placeholders": placeholders})
    return Prompt(path=path, mode=f.mode, content_hash=hashlib.sha256(raw).hexdigest(), system=f.system, user=f.user,
                  template=f.template, stop=f.stop)


# -- attack suites ---------------------------------------------------------------------------------

ATTACK_KINDS = ("indirect", "direct")


class SuccessCriterion(StrictModel):
    """When an attack succeeded: the answer contains one of ``contains`` (case-insensitive), or
    repeats ``prompt_fragment_words`` words of the prompt's own instructions in a row."""

    contains: tuple[str, ...] = ()
    prompt_fragment_words: int | None = None

    @field_validator("contains", mode="before")
    @classmethod
    def _contains(cls, v: Any) -> tuple[str, ...]:
        items = [] if v is None else [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(c, str) and c.strip() for c in items):
            raise ValueError("expected non-empty strings")
        return tuple(items)

    @field_validator("prompt_fragment_words", mode="before")
    @classmethod
    def _words(cls, v: Any) -> int | None:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 3):
            raise ValueError("expected an integer of at least 3")
        return v

    @model_validator(mode="after")
    def _some_criterion(self) -> SuccessCriterion:
        if not self.contains and self.prompt_fragment_words is None:
            raise ValueError("expected contains and/or prompt_fragment_words")
        return self


class AttackEntry(StrictModel):
    """One attack of a suite: ``indirect`` (planted in the top passage) or ``direct`` (appended to the question)."""

    id: str
    kind: str
    goal: str | None = None  # canary | exfiltration | link | ...; defaults to the kind
    text: str
    success: SuccessCriterion

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (str, int)):
            raise ValueError(f"expected text, got {type(v).__name__}")
        return str(v)

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> str:
        if v not in ATTACK_KINDS:
            raise ValueError(f"expected one of {', '.join(ATTACK_KINDS)}, got {v!r}")
        return v


class AttackSuiteFile(StrictModel):
    """An attack suite file: ``name``, an integer ``version`` and a non-empty list ``attacks`` with unique ids."""

    name: str | None = None
    version: int
    attacks: tuple[AttackEntry, ...]

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError("expected an integer")
        return v

    @field_validator("attacks", mode="before")
    @classmethod
    def _attacks(cls, v: Any) -> Any:
        if not isinstance(v, list) or not v:
            raise ValueError("expected a non-empty list 'attacks' (each with id, kind, text and success)")
        return v

    @model_validator(mode="after")
    def _unique_ids(self) -> AttackSuiteFile:
        seen: set[str] = set()
        for i, a in enumerate(self.attacks):
            if a.id in seen:
                raise field_error(("attacks", i, "id"), f"id {a.id!r} repeats an earlier attack")
            seen.add(a.id)
        return self


@dataclass(frozen=True)
class Attack:
    id: str
    kind: str  # indirect | direct
    goal: str  # canary | exfiltration | link | ...
    text: str
    contains: tuple[str, ...] = ()  # success when the answer contains any of these (case-insensitive)
    prompt_fragment_words: int | None = None  # success when the answer repeats this many prompt words in a row


@dataclass(frozen=True)
class AttackSuite:
    path: Path
    name: str
    version: int
    content_hash: str
    attacks: tuple[Attack, ...]


def load_attack_suite(path: str | os.PathLike) -> AttackSuite:
    """Read and validate an attack suite; every problem is a one-line ConfigError naming the file."""
    path = Path(path)
    raw, f = load_yaml_model(AttackSuiteFile, path, "attack suite", "with name, version and a non-empty list 'attacks'")
    attacks = tuple(Attack(a.id, a.kind, a.goal or a.kind, a.text.strip(), a.success.contains, a.success.prompt_fragment_words)
                    for a in f.attacks)
    return AttackSuite(path, f.name or path.stem, f.version, hashlib.sha256(raw).hexdigest(), attacks)


# -- the price table -------------------------------------------------------------------------------

PRICE_KEYS = ("input_per_1m_usd", "output_per_1m_usd")


def _price(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"expected a non-negative number, got {v!r}")
    return v


def _date_or_text(v: Any) -> Any:
    if v is not None and not isinstance(v, (str, dt.date)):
        raise ValueError(f"expected a date (YYYY-MM-DD) or text, got {v!r}")
    return v


Price = Annotated[float, BeforeValidator(_price)]
DateOrText = Annotated[dt.date | str | None, BeforeValidator(_date_or_text)]


class PriceEntry(StrictModel):
    """USD per million tokens of one model. ``updated`` and ``source`` say when and where the
    price was read: kept for the people who maintain the table, not used in any computation."""

    input_per_1m_usd: Price
    output_per_1m_usd: Price
    per_call_usd: Price = 0.0  # a price per request on top of tokens (rerank APIs priced per search)
    updated: DateOrText = None
    source: DateOrText = None

    @model_validator(mode="before")
    @classmethod
    def _both_prices(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not set(PRICE_KEYS) <= set(data):
            raise ValueError(f"needs {' and '.join(PRICE_KEYS)}")
        return data


class PriceTable(StrictModel):
    """The price table file: ``models: {name: {input_per_1m_usd, output_per_1m_usd, updated?,
    source?}}``, with the table's own ``updated`` and ``source``."""

    updated: DateOrText = None
    source: DateOrText = None
    models: dict[str, PriceEntry]


def load_price_table(path: str | os.PathLike) -> PriceTable:
    """Read and validate a price table; every problem is a one-line ConfigError naming the file."""
    path = Path(path)
    return load_yaml_model(PriceTable, path, "price table", "'models: {name: {input_per_1m_usd, output_per_1m_usd}}'")[1]
