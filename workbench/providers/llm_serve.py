"""The local LLM server's process: ``llama_cpp.server`` run in this interpreter, plus a watchdog
that ends it once the process that started it is gone.

The server runs in its own session (so a Ctrl-C or a kill of a notebook's process group does not
reach it mid-answer), which also means nothing stops it when its parent dies without calling
``stop()``: ``kill -9`` of ``workbench run``, an out-of-memory kill, a crashed kernel. The watchdog
polls the parent process id; when the parent is gone the process is re-parented and the server
exits. (``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when the *thread* that started the child
exits, and servers are started from worker threads that end long before their process.)

    python .../workbench/providers/llm_serve.py --parent PID llama_cpp.server --model ... --port ...

Run by path, it imports only the standard library before handing over to the module.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time

POLL_S = 0.5


def watch_parent(parent: int, poll_s: float = POLL_S) -> None:
    """Exit this process as soon as its parent is no longer ``parent`` (it died, we were re-parented)."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    os._exit(0)  # nothing to flush: the server holds no state worth saving


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[0] != "--parent" or not argv[1].isdigit():
        raise SystemExit("usage: llm_serve.py --parent PID MODULE [ARGS...]")
    parent, module, args = int(argv[1]), argv[2], argv[3:]
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        sys.path.pop(0)  # run by path: this folder's modules must not shadow the server's imports
    threading.Thread(target=watch_parent, args=(parent,), name="parent-watchdog", daemon=True).start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
