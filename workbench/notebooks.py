"""Executing the workbench's notebooks with papermill, and rendering them to offline HTML.

Papermill only warns about a parameter the notebook does not declare, and happily injects a string
where the notebook expects a number; both are silent mistakes in a bake-off, so
:func:`validate_parameters` rejects them first (a one-line ``NotebookError`` with a suggestion).
A cell that fails stops the notebook: :func:`execute_notebook` raises a ``NotebookError`` that
names the cell's error and where the partially executed notebook was saved, so the traceback is
one ``jupyter lab PATH`` away. :func:`render_html` turns an executed notebook into a page with no
code, no prompts and nothing fetched from the network (see ``templates/report.html.j2``).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import NotebookError, did_you_mean
from .report.style import CSS
from .settings import Workspace, env, notebooks_dir

NOTEBOOKS = ("bakeoff", "report", "explore")
TEMPLATE = Path(__file__).parent / "report" / "templates" / "report.html.j2"
# A custom MIME type for machine-readable results a notebook records (read back by the CLI).
SUMMARY_MIME = "application/vnd.workbench.summary+json"
KERNEL_NAME = "python3"
# The kernel's own log (ipykernel's "running over TCP without encryption" notice on loopback, the
# "KeyboardInterrupt caught" that jupyter_client's interrupt-before-shutdown can cause) would land on
# the caller's stderr between progress lines. Cell errors still arrive as notebook errors.
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]
# Sorts a <table class="sortable"> by the clicked column, numerically when cells carry data-sort.
SORT_SCRIPT = """document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    th.title = 'click to sort'; th.style.cursor = 'pointer';
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-order') !== 'asc';
      table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('data-order'); });
      th.setAttribute('data-order', asc ? 'asc' : 'desc');
      function key(row) {
        var cell = row.cells[col], v = cell ? (cell.getAttribute('data-sort') || cell.textContent.trim()) : '';
        var n = parseFloat(v); return isNaN(n) || !/^-?[0-9.eE+-]+$/.test(v) ? v.toLowerCase() : n;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});"""


def notebook_path(name: str) -> Path:
    if name not in NOTEBOOKS:
        raise NotebookError(f"unknown notebook {name!r}{did_you_mean(name, NOTEBOOKS)}; known: {', '.join(NOTEBOOKS)}")
    path = notebooks_dir() / f"{name}.ipynb"
    if not path.is_file():
        raise NotebookError(f"notebook {path} not found (set WORKBENCH_NOTEBOOKS to the folder holding {name}.ipynb)")
    return path


def resolve_store_url(store_url: str = "") -> str:
    """A notebook's ``store_url`` parameter, else ``$WORKBENCH_STORE``, else the project's default store."""
    return Workspace.resolve(store=store_url or None).store_url


def resolve_cache_dir(cache_dir: str = "") -> Path:
    """A notebook's ``cache_dir`` parameter, else ``$WORKBENCH_CACHE``, else the project's cache folder."""
    return Workspace.resolve(cache_dir=cache_dir or None).cache_dir


def resolve_experiment(store, name: str = "") -> str:
    """A notebook's ``experiment`` parameter, else ``$WORKBENCH_EXPERIMENT``, else the store's only experiment."""
    name = name or env("WORKBENCH_EXPERIMENT") or ""
    if name:
        return name
    names = store.experiment_names()
    if len(names) == 1:
        return names[0]
    raise NotebookError(f"set the experiment parameter (or $WORKBENCH_EXPERIMENT): the store holds {', '.join(names) or 'no experiments'}")


# -- parameters --------------------------------------------------------------------------------

_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "tuple": tuple}


def _expected_type(declared: Mapping[str, str]) -> tuple[type | None, bool]:
    """(type, None allowed) from the parameter's annotation, else from its default's type."""
    annotation = (declared.get("inferred_type_name") or "None").replace(" ", "")
    if annotation != "None":
        optional = "None" in annotation or annotation.startswith("Optional[")
        names = re.findall(r"[A-Za-z_]+", annotation)
        for name in names:
            base = name.lower()
            if base in _TYPES:
                return _TYPES[base], optional
        return None, True
    try:
        default = ast.literal_eval(declared.get("default", "None"))
    except (ValueError, SyntaxError):
        return None, True  # an expression default: nothing to check against
    if default is None:
        return None, True
    return type(default), False


def _type_ok(value: Any, expected: type, optional: bool) -> bool:
    if value is None:
        return optional
    if expected is bool or isinstance(value, bool):
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    if expected in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, expected)


def check_values(name: str, declared: Mapping[str, Mapping[str, str]], parameters: Mapping[str, Any]) -> None:
    """The one parameter check: every name in ``parameters`` is declared, every value has the
    declared type (``declared`` as :func:`papermill.inspect_notebook` returns it).

    Raises:
        NotebookError: one line naming the notebook, the parameter and what was expected.
    """
    if not declared and parameters:
        raise NotebookError(f"{name}: has no cell tagged 'parameters', so it takes no parameters (got {', '.join(sorted(parameters))})")
    for key, value in parameters.items():
        if key not in declared:
            raise NotebookError(f"{name}: unknown parameter {key!r}{did_you_mean(key, declared)}; known: {', '.join(sorted(declared))}")
        expected, optional = _expected_type(declared[key])
        if expected is not None and not _type_ok(value, expected, optional):
            hint = " (papermill: pass lists and dicts with -y, e.g. -y 'axes: {retrieval: [bm25]}')" \
                if expected in (dict, list, tuple) and isinstance(value, str) else ""
            raise NotebookError(f"{name}: parameter {key!r} expects {expected.__name__}{' or None' if optional else ''} "
                                f"(default {declared[key]['default']}), got {type(value).__name__} {value!r}{hint}")


def validate_parameters(path: str | os.PathLike, parameters: Mapping[str, Any]) -> None:
    """Reject parameters the notebook does not declare, and values of the wrong type (before a
    kernel starts; the notebook repeats the check itself, see :func:`check_parameters`).

    Raises:
        NotebookError: one line naming the notebook, the parameter and what was expected.
    """
    import papermill

    check_values(Path(path).name, papermill.inspect_notebook(str(path)), parameters)


def assigned_names(source: str) -> list[str] | None:
    """The names a cell assigns when it holds nothing but assignments of literals to plain names
    (a parameters cell, or the cell papermill injects after it); None for any other cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target = node.target
        else:
            return None
        try:
            ast.literal_eval(node.value)  # parameters are literals (papermill injects them so)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
        names.append(target.id)
    return names or None


def parameter_cells(history: Sequence[str]) -> tuple[str, list[str]] | None:
    """(the parameters cell's source, the names assigned after it) from a kernel's input history.

    The cells executed just before the current one (``history[-1]``) that hold only assignments
    are the parameters cell (the first) and what papermill injected after it (the rest). None when
    the cell before the current one is something else (cells run out of order in JupyterLab).
    """
    found: list[tuple[str, list[str]]] = []
    for source in reversed(list(history)[:-1]):
        names = assigned_names(source)
        if names is None:
            break
        found.append((source, names))
    if not found:
        return None
    found.reverse()
    return found[0][0], [n for _, names in found[1:] for n in names]


def declared_parameters(source: str) -> dict[str, dict[str, str]]:
    """A parameters cell's declarations, exactly as :func:`papermill.inspect_notebook` reads them."""
    from nbformat.v4 import new_code_cell
    from papermill.translators import PythonTranslator

    return {p.name: p._asdict() for p in PythonTranslator.inspect(new_code_cell(source))}


def check_parameters(name: str, namespace: Mapping[str, Any]) -> None:
    """A notebook's own parameter check, run in its first cell after the parameters cell, so it
    holds whoever executes the notebook (``workbench``, plain ``papermill``, a scheduler,
    JupyterLab): a name papermill injected that the parameters cell does not declare, or a value
    of the wrong type, stops the notebook with the CLI's one-line error (:func:`check_values`).

    The declarations and the injected names come from the kernel's input history (the parameters
    cell and papermill's injected cell are the assignment-only cells executed just before this
    one); when that history is not there, from the notebook shipped as ``name``.

    Raises:
        NotebookError: one line naming the notebook, the parameter and what was expected.
    """
    from IPython import get_ipython

    shell = get_ipython()
    found = parameter_cells(shell.user_ns.get("In", []) if shell is not None else [])
    if found is None:
        import papermill

        declared, injected = papermill.inspect_notebook(str(notebook_path(name))), []
    else:
        declared, injected = declared_parameters(found[0]), found[1]
    names = [*[k for k in injected if k not in declared], *[k for k in declared if k in namespace]]  # typos first
    check_values(f"{name}.ipynb", declared, {k: namespace.get(k) for k in names})


# -- execution ---------------------------------------------------------------------------------

def execute_notebook(name: str, output_path: str | os.PathLike, parameters: Mapping[str, Any] | None = None, *,
                     cwd: str | os.PathLike | None = None, stream: TextIO | None = None, timeout_s: float | None = None):
    """Run notebook ``name`` with papermill into ``output_path``; return the executed notebook node.

    Args:
        name: ``bakeoff``, ``report`` or ``explore``.
        output_path: Where the executed copy goes (it is saved after every cell, so a failure
            leaves a partial notebook with the traceback there).
        parameters: Values for the notebook's ``parameters`` cell; validated first.
        cwd: The kernel's working directory (relative paths in parameters resolve against it).
        stream: If given, the notebook's stdout/stderr are copied there as they are produced.
        timeout_s: Per-cell timeout; None waits as long as the cell runs.

    Raises:
        NotebookError: unknown/mistyped parameters, or a cell failed (names the error and the
            partial notebook's path).
    """
    import papermill
    from papermill.exceptions import PapermillException, PapermillExecutionError

    source = notebook_path(name)
    parameters = dict(parameters or {})
    validate_parameters(source, parameters)
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        return papermill.execute_notebook(
            str(source), str(output), parameters=parameters, kernel_name=KERNEL_NAME, progress_bar=False,
            log_output=False, stdout_file=stream, stderr_file=stream, cwd=str(cwd) if cwd else None,
            execution_timeout=timeout_s, extra_arguments=KERNEL_ARGS)
    except PapermillExecutionError as exc:
        evalue = " ".join(str(exc.evalue).split())
        raise NotebookError(f"{name}.ipynb failed in cell {exc.exec_count}: {exc.ename}: {evalue} "
                            f"(partially executed notebook: {output})") from None
    except PapermillException as exc:
        raise NotebookError(f"{name}.ipynb: {' '.join(str(exc).split())} (notebook: {output})") from None
    except RuntimeError as exc:  # kernel died or could not start
        raise NotebookError(f"{name}.ipynb: kernel {KERNEL_NAME!r} failed: {' '.join(str(exc).split())} "
                            f"(partially executed notebook: {output})") from None


def recorded(nb, mime: str = SUMMARY_MIME) -> list[Any]:
    """The payloads a notebook displayed with ``mime`` (see :func:`record`), in order."""
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if mime in data:
                value = data[mime]
                found.append(json.loads(value) if isinstance(value, str) else value)
    return found


def record(payload: Mapping[str, Any], mime: str = SUMMARY_MIME) -> None:
    """Display a JSON payload under ``mime`` in the running notebook, for :func:`recorded`. Its
    visible form is empty HTML, so JupyterLab and ``jupyter nbconvert`` show nothing for it."""
    from IPython.display import display

    display({mime: json.loads(json.dumps(payload, default=str)), "text/html": ""}, raw=True)


# -- rendering ---------------------------------------------------------------------------------

def content_security_policy(script: str | None) -> str:
    """A policy that loads nothing from anywhere (images only as data: URIs) and runs no script
    but ``script`` (allowed by its hash), so even markup that slipped past escaping stays inert."""
    scripts = "'none'"
    if script:
        scripts = "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"
    return f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {scripts}; base-uri 'none'; form-action 'none'"


def render_html(notebook_file: str | os.PathLike, html_file: str | os.PathLike, title: str) -> Path:
    """Render an executed notebook to a self-contained page: outputs only, inline CSS and images.

    Only rich outputs (HTML, PNG, text) are kept; code, prompts, streams (progress, warnings) and
    markdown cells are left out, so the page is what the workbench wrote for readers. A Content
    Security Policy blocks every network load and every script but the table sorter.
    """
    import nbformat
    from nbconvert.exporters import TemplateExporter

    nb = nbformat.read(str(notebook_file), as_version=4)
    # The plain TemplateExporter, not HTMLExporter: the latter re-serialises the page through
    # BeautifulSoup and adds its lab/classic resources; this page is exactly what the template writes.
    exporter = TemplateExporter(template_file=str(TEMPLATE), file_extension=".html", exclude_input=True, exclude_input_prompt=True,
                                exclude_output_prompt=True, exclude_markdown=True, exclude_raw=True, exclude_unknown=True)
    page = {"title": title, "script": SORT_SCRIPT, "csp": content_security_policy(SORT_SCRIPT), "css": CSS}
    body, _ = exporter.from_notebook_node(nb, resources={"workbench": page})
    path = Path(html_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(path)
    return path
