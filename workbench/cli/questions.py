"""``workbench questions``: evaluation sets from your documents (generate), and their review."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from ..config.experiment import GENERATION_PROVIDERS, GenerationSpec
from ..errors import ConfigError, DatasetError, WorkbenchError, unknown_name
from ..hashing import file_sha256
from .app import app, console, fail, out

questions_app = typer.Typer(no_args_is_help=True, help="Evaluation sets: generate questions from your documents, review them.")
app.add_typer(questions_app, name="questions")


def _parse_llm(value: str):
    """``local:smollm2-135m``, ``openai:gpt-4o-mini``, ``openai_compatible:NAME`` -> (provider, model)."""
    provider, sep, model = value.partition(":")
    if not sep or not model:
        raise ConfigError(f"--llm {value!r}: expected PROVIDER:MODEL, e.g. local:smollm2-135m")
    if provider not in GENERATION_PROVIDERS:
        raise ConfigError(f"--llm {value!r}: " + unknown_name("provider", provider, GENERATION_PROVIDERS))
    return provider, model


@questions_app.command("generate")
def questions_generate(
    docs_folder: Annotated[Path, typer.Argument(help="folder of .md/.txt/.html/.pdf/.docx documents (read recursively)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="the evaluation set folder to write, e.g. evalsets/NAME")],
    llm: Annotated[str, typer.Option("--llm", help="PROVIDER:MODEL (local:smollm2-135m, openai:MODEL, "
                                                   "openai_compatible:MODEL)")] = "local:smollm2-135m",
    n: Annotated[int, typer.Option("-n", help="answerable questions wanted (fewer when the filters reject too many)")] = 50,
    unanswerable: Annotated[float, typer.Option(help="add this fraction of n as questions not answerable from the documents")] = 0.1,
    seed: Annotated[int, typer.Option(help="passage order and sampling seed")] = 0,
    max_tokens: Annotated[int, typer.Option(help="max tokens per generated question")] = 96,
    temperature: Annotated[float, typer.Option(help="sampling temperature of the generator")] = 0.7,
    max_attempts: Annotated[int, typer.Option(help="candidates to try at most (0: 3n)")] = 0,
    base_url: Annotated[str | None, typer.Option(help="endpoint of an openai_compatible provider")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="environment variable holding the API key")] = None,
    threads: Annotated[int, typer.Option(help="CPU threads of the local LLM server (0: all cores; 1 when the machine is busy)")] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing evaluation set at --output")] = False,
    verbose: Annotated[bool, typer.Option("-v", help="print every rejected candidate")] = False,
) -> None:
    """Write a versioned evaluation set (questions, answers, gold spans) from a folder of documents."""
    # imported here: LlamaIndex's readers and the openai client would slow every other command's start
    from ..data.evalset import write_evalset
    from ..providers.llm_server import LocalLLMServer, local_model_path
    from ..questions import QuestionLLM, build_manifest, generate_questions, prompt_hash
    from ..stages.generation import make_client

    try:
        if n < 1 or not 0 <= unanswerable <= 1:
            raise ConfigError("-n must be at least 1 and --unanswerable between 0 and 1")
        if (output / "evalset.json").exists() and not overwrite:
            raise ConfigError(f"{output}: an evaluation set exists there (choose another name, or --overwrite)")
        provider, model = _parse_llm(llm)
        spec = GenerationSpec(provider=provider, model=model, prompt="-", base_url=base_url, api_key_env=api_key_env,
                              max_tokens=max_tokens, temperature=temperature, seed=seed)
        ingestion = _ingest(docs_folder)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(LocalLLMServer(model, n_threads=threads or None)) if provider == "local" else None
            qllm = QuestionLLM(make_client(spec, server.base_url if server else None), model, provider=provider,
                               max_tokens=max_tokens, temperature=temperature, seed=seed)
            log = (lambda m: console.print(m, highlight=False, soft_wrap=True)) if verbose else \
                (lambda m: console.print(m, highlight=False) if "candidates," in m else None)
            result = generate_questions(ingestion.docs, qllm, n, seed=seed, unanswerable=unanswerable,
                                        max_attempts=max_attempts or None, log=log)
        generator = {"provider": provider, "model": model, "base_url": base_url, "prompt_hash": prompt_hash(),
                     "temperature": temperature, "max_tokens": max_tokens, "seed": seed, "n_requested": n,
                     "unanswerable_fraction": unanswerable, "llm_calls": qllm.calls}
        if provider == "local":
            generator["model_file_sha256"] = file_sha256(local_model_path(model))
        write_evalset(output, build_manifest(output.name, docs_folder, output, ingestion, generator, result), result.questions())
    except WorkbenchError as exc:
        fail(exc)
    _print_kept(output, result)


def _ingest(docs_folder: Path):
    """Read the documents, printing what was skipped or failed (by name)."""
    from ..data.ingest import ingest_folder

    ingestion = ingest_folder(docs_folder)
    console.print(ingestion.summary(), highlight=False, soft_wrap=True)
    for line in ingestion.skipped:
        console.print(f"  skipped {line}", highlight=False, soft_wrap=True)
    for line in ingestion.errors:
        console.print(f"  [red]failed[/red] {line}", highlight=False, soft_wrap=True)
    if not ingestion.docs:
        raise DatasetError(f"{docs_folder}: no readable documents")
    return ingestion


def _print_kept(output: Path, result) -> None:
    from ..data.evalset import counts

    stats, c = result.stats(), counts(result.questions())
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(stats["rejected"].items())) or "none"
    out.print(f"{output}: {c['answerable']} answerable + {c['unanswerable']} unanswerable questions kept of "
              f"{stats['candidates']} candidates (rejected: {rejected}); difficulty {c['difficulty_mix']}",
              highlight=False, soft_wrap=True)


@questions_app.command("review")
def questions_review(
    evalset: Annotated[Path | None, typer.Argument(help="the evaluation set folder (evalsets/NAME); not with --run")] = None,
    export: Annotated[Path | None, typer.Option("--export", help="write the questions (or, with --run, the answers) to this CSV")] = None,
    import_: Annotated[Path | None, typer.Option("--import", help="apply the decisions (or, with --run, the labels) of a reviewed CSV")] = None,
    run: Annotated[str, typer.Option("--run", help="label this run's answers faithful yes/no, to check the LLM judge against")] = "",
    store: Annotated[str | None, typer.Option("--store", help="results store URL (with --run)")] = None,
) -> None:
    """Export questions to a CSV (decision column: accept, edit, reject), or import the decisions back.
    With --run RUN_ID: export a run's answers for a person to label (faithful: yes/no), or import the
    labels; the judge's accuracy and Cohen's kappa against them appear in the report."""
    from ..review import export_judge_review, export_review, import_judge_review, import_review

    try:
        if (export is None) == (import_ is None):
            raise ConfigError("give exactly one of --export FILE.csv or --import FILE.csv")
        if run:
            _review_answers(run, store, export, import_, export_judge_review, import_judge_review)
            return
        if evalset is None:
            raise ConfigError("give the evaluation set folder (or --run RUN_ID to label a run's answers)")
        if export is not None:
            rows = export_review(evalset, export)
            out.print(f"{export}: {rows} questions; fill the 'decision' column (accept, edit, reject) and import it back",
                      highlight=False, soft_wrap=True)
        else:
            res = import_review(evalset, import_)
            out.print(f"{evalset}: revision {res['revision']} ({res['accept']} accepted, {res['edit']} edited, "
                      f"{res['reject']} rejected, {res['unchanged']} unchanged)", highlight=False, soft_wrap=True)
    except WorkbenchError as exc:
        fail(exc)


def _review_answers(run: str, store_url: str | None, export: Path | None, import_: Path | None, export_fn, import_fn) -> None:
    from ..settings import Workspace
    from ..store import Store

    st = Store(Workspace.resolve(store=store_url).store_url)
    if export is not None:
        n = export_fn(st, run, export)
        out.print(f"{export}: {n} answers; fill the 'faithful' column (yes, no, or empty) and import it back with --run {run} --import",
                  highlight=False, soft_wrap=True)
    else:
        res = import_fn(st, run, import_)
        out.print(f"run {run}: {res['labelled']} answers labelled ({res['skipped']} left empty); the report shows the judge against them",
                  highlight=False, soft_wrap=True)
