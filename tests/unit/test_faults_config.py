"""Provider-fault settings, budgets and safety suites in experiment files (bad inputs are one-line
errors naming file, line and field), run ids that do not move for grid points that use none of
them, and the retry policy's pieces (what is transient, Retry-After, breaker exclusions)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest

from workbench.config.experiment import load_experiment
from workbench.errors import ConfigError
from workbench.providers.resilience import RetryPolicy, WaitRetryAfterOrBackoff, breaker_for, error_kind, is_transient, retry_after_s

ROOT = Path(__file__).resolve().parents[2]
BASE = """\
name: t
dataset: data
grid:
  chunking: [{splitter: none}]
  retrieval: [{method: bm25, top_k: 3}]
  generation:
    - provider: local
      model: smollm2-135m
      prompt: prompt.yaml
"""


@pytest.fixture
def exp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "prompt.yaml").write_text("mode: chat\nuser: '{context} {question}'\n", encoding="utf-8")
    (tmp_path / "suite.yaml").write_text((ROOT / "data/attacks/injection-v1.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _load(exp_dir: Path, text: str):
    path = exp_dir / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return load_experiment(path)


def test_fault_budget_and_safety_settings_load(exp_dir):
    text = BASE + """      max_retries: 5
      retry_backoff_s: 0.2
      breaker_failures: 3
      breaker_reset_s: 10
      fallback: {provider: openai_compatible, model: backup, base_url: "http://127.0.0.1:9/v1", api_key_env: BACKUP_KEY}
budget: {max_cost_usd: 2.5, max_tokens: 100000}
safety:
  injection: {suite: suite.yaml, n: 4}
  pii: {store_redaction: true}
"""
    exp = _load(exp_dir, text)
    gen = exp.spec.grid.generation[0]
    assert gen.max_retries == 5 and gen.fallback.model == "backup" and exp.spec.budget.max_tokens == 100000
    fb = gen.fallback_spec()
    assert fb.provider == "openai_compatible" and fb.prompt == gen.prompt and fb.max_tokens == gen.max_tokens and fb.fallback is None
    assert exp.attack_suite_path == (exp_dir / "suite.yaml").resolve() and exp.spec.safety.pii.store_redaction


BAD = {
    "budget_without_limits": ("budget: {}\n", ":10: budget: a budget needs max_cost_usd or max_tokens"),
    "budget_negative": ("budget: {max_cost_usd: -1}\n", ":10: budget.max_cost_usd: Input should be greater than 0"),
    "budget_typo": ("budget: {max_cost: 1}\n", "budget.max_cost: unknown key 'max_cost' (did you mean 'max_cost_usd'?)"),
    "suite_missing": ("safety: {injection: {suite: nope.yaml}}\n", "safety.injection.suite: 'nope.yaml' not found"),
    "injection_n_zero": ("safety: {injection: {suite: suite.yaml, n: 0}}\n", "safety.injection.n: Input should be greater than 0"),
    "pii_wrong_type": ("safety: {pii: {store_redaction: maybe}}\n", "safety.pii.store_redaction: Input should be a valid boolean"),
    "safety_typo": ("safety: {injections: {suite: suite.yaml}}\n", "unknown key 'injections' (did you mean 'injection'?)"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_budget_and_safety_settings(exp_dir, case):
    extra, message = case
    with pytest.raises(ConfigError) as err:
        _load(exp_dir, BASE + extra)
    assert message in str(err.value) and "exp.yaml" in str(err.value) and "\n" not in str(err.value)


BAD_GEN = {
    "fallback_unknown_provider": ("      fallback: {provider: opnai, model: x}\n", "did you mean 'openai'?"),
    "fallback_compatible_without_url": ("      fallback: {provider: openai_compatible, model: x}\n",
                                        "fallback.base_url: provider 'openai_compatible' needs base_url"),
    "fallback_unknown_local": ("      fallback: {provider: local, model: smolm2}\n", "fallback.model: unknown local LLM 'smolm2'"),
    "retries_negative": ("      max_retries: -1\n", "max_retries: Input should be greater than or equal to 0"),
    "breaker_zero": ("      breaker_failures: 0\n", "breaker_failures: Input should be greater than or equal to 1"),
}


@pytest.mark.parametrize("case", BAD_GEN.values(), ids=BAD_GEN.keys())
def test_bad_fault_settings(exp_dir, case):
    extra, message = case
    with pytest.raises(ConfigError) as err:
        _load(exp_dir, BASE + extra)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_run_ids_ignore_retry_settings_and_unset_features(exp_dir, tmp_path):
    from workbench.pipeline.plan import identity_config as _identity_config

    plain = _load(exp_dir, BASE).runs()[0]
    tuned = _load(exp_dir, BASE + "      max_retries: 7\n      breaker_reset_s: 5\n").runs()[0]
    with_fb = _load(exp_dir, BASE + "      fallback: {provider: local, model: smollm2-135m}\n").runs()[0]
    assert _identity_config(plain) == _identity_config(tuned)
    assert "fallback" not in _identity_config(plain)["generation"] and "max_retries" not in _identity_config(plain)["generation"]
    assert _identity_config(with_fb) != _identity_config(plain)


def _status_error(cls, status: int, headers: dict | None = None):
    response = httpx.Response(status, headers=headers or {}, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    return cls("boom", response=response, body=None)


def test_what_is_retried():
    req = httpx.Request("POST", "http://x")
    assert is_transient(_status_error(openai.InternalServerError, 500))
    assert is_transient(_status_error(openai.RateLimitError, 429))
    assert is_transient(openai.APITimeoutError(request=req)) and is_transient(openai.APIConnectionError(request=req))
    assert is_transient(httpx.RemoteProtocolError("cut mid-stream"))
    assert not is_transient(_status_error(openai.BadRequestError, 400))
    assert not is_transient(_status_error(openai.AuthenticationError, 401))
    assert not is_transient(ValueError("a bug is not a provider fault"))
    # plain httpx clients (the hosted rerank API) raise HTTPStatusError from raise_for_status()
    for status, transient in ((503, True), (429, True), (400, False), (401, False)):
        response = httpx.Response(status, request=httpx.Request("POST", "http://x/v1/rerank"))
        error = httpx.HTTPStatusError("status", request=response.request, response=response)
        assert is_transient(error) is transient


def test_retry_after_is_honoured_and_capped():
    policy = RetryPolicy(backoff_s=0.5, max_backoff_s=20)
    wait = WaitRetryAfterOrBackoff(policy)

    def state(exc, attempt=1):
        return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: exc), attempt_number=attempt)

    assert retry_after_s(_status_error(openai.RateLimitError, 429, {"Retry-After": "3"})) == 3.0
    assert wait(state(_status_error(openai.RateLimitError, 429, {"Retry-After": "3"}))) == 3.0
    assert wait(state(_status_error(openai.RateLimitError, 429, {"Retry-After": "3600"}))) == 20.0  # capped
    # no header (or an HTTP date): exponential backoff with jitter, growing with the attempt
    waits = [wait(state(_status_error(openai.InternalServerError, 500), attempt)) for attempt in (1, 4)]
    assert 0.5 <= waits[0] <= 1.0 + 1e-9 and 4.0 <= waits[1] <= 4.5 + 1e-9
    assert retry_after_s(_status_error(openai.RateLimitError, 429, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None


def test_breaker_opens_on_endpoint_faults_only():
    import pybreaker

    from workbench.providers.resilience import call

    policy = RetryPolicy(max_retries=0, breaker_failures=2, breaker_reset_s=60)
    endpoint = "http://unit-test/v1#client-errors"
    for _ in range(5):  # client errors: raised, never counted
        with pytest.raises(openai.BadRequestError):
            call(lambda: (_ for _ in ()).throw(_status_error(openai.BadRequestError, 400)), endpoint, policy)
    assert breaker_for(endpoint, policy).current_state == "closed"
    endpoint = "http://unit-test/v1#server-errors"
    calls = []

    def failing():
        calls.append(1)
        raise _status_error(openai.InternalServerError, 503)

    with pytest.raises(openai.InternalServerError):
        call(failing, endpoint, policy)
    with pytest.raises(pybreaker.CircuitBreakerError):
        call(failing, endpoint, policy)
    with pytest.raises(pybreaker.CircuitBreakerError):  # open: fails without calling
        call(failing, endpoint, policy)
    assert len(calls) == 2


def test_error_kinds():
    assert error_kind("APITimeoutError: Request timed out.") == "timeout"
    assert error_kind("RateLimitError: Error code: 429") == "rate limit (429)"
    assert error_kind("CircuitBreakerError: Failures threshold reached") == "circuit open"
    assert error_kind("embedding openai_compatible:x: APIConnectionError: Connection error.") == "connection error"
    assert error_kind(None) is None


def test_workbench_run_prints_one_line_per_troubled_run(tmp_path, monkeypatch):
    from rich.console import Console

    from tests.unit.test_reportdata import _generation_store
    from workbench.cli import run as cli_run

    store = _generation_store(tmp_path)
    store.finish_run("g_slow", "stopped: budget", 0, 12, 0.0, {})
    printed = Console(file=(buf := __import__("io").StringIO()), width=300)
    monkeypatch.setattr(cli_run, "console", printed)
    cli_run.print_failures(store, store.leaderboard("gen_exp"))
    lines = buf.getvalue().strip().splitlines()
    assert lines == ["run g_best (partial): 1 of 12 questions failed: timeout",
                     "run g_slow (stopped: budget): stopped: budget after 12 of 12 questions (run again to resume)"]
