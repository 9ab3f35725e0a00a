"""Run command lines in one child process under an address-space limit (``RLIMIT_AS``).

The size rows of the fault tables (absurd config.json values, ``--max-length 100000000``, ``n_heads`` 1e9 in a
results.json) must end in a one-line error before anything is allocated. Run unlimited, a regression would let
the kernel's OOM killer pick a process on a shared machine; under the limit it fails as a MemoryError (or
torch's ``can't allocate memory``) that the row reports. One child runs a whole table, so the cost of importing
torch and transformers is paid once:

    python -m tests.helpers.limited HEADROOM_BYTES CASES.json RESULTS.jsonl

CASES.json is ``{"preload": [modules], "cases": [{"name", "main": "module:function", "argv"}, ...]}``; RESULTS.jsonl gets one
``{"name", "code", "err", "seconds"}`` line per case as soon as it ends (``code`` is ``"crash"`` with the traceback in
``err`` when ``main`` raised).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tests.helpers.faults import REPO_ROOT, subprocess_env

# Address space the child may add to what its imports took: enough for a tiny model's refusal, far below any
# absurd size; the child's memory checks see it as their limit.
HEADROOM_BYTES = 2 << 30
CASE_SECONDS = 120  # a case still running then has regressed (old code built 1e7 layers for minutes)

# Imported before the limit is set (their address space counts as the baseline) with the modules each table names.
_PRELOAD = ("transformers.models.bert.modeling_bert",)


def run_limited(cases: list[tuple[str, str, list]], workdir: Path, *, preload: tuple = (),
                headroom: int = HEADROOM_BYTES) -> dict[str, tuple[int | str | None, str]]:
    """{name: (exit status, stderr)} of every ``(name, "module:function", argv)`` run in one limited child, which
    imports ``preload`` (the modules the commands load lazily) before it sets the limit.

    A case the child never reported (it died) maps to ``(None, the child's stderr)``."""
    workdir.mkdir(parents=True, exist_ok=True)
    cases_path, results_path = workdir / "cases.json", workdir / "results.jsonl"
    cases_path.write_text(json.dumps({"preload": list(preload), "cases": [
        {"name": n, "main": m, "argv": [str(a) for a in argv]} for n, m, argv in cases]}))
    results_path.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "tests.helpers.limited", str(headroom), str(cases_path),
                           str(results_path)], cwd=REPO_ROOT, env=subprocess_env(CUDA_VISIBLE_DEVICES=""),
                          capture_output=True, text=True, timeout=CASE_SECONDS * (len(cases) + 2))
    reported = {}
    if results_path.is_file():
        for line in results_path.read_text().splitlines():
            record = json.loads(line)
            reported[record["name"]] = (record["code"], record["err"])
    died = f"the limited child exited with {done.returncode} before this case: {done.stderr[-3000:]}"
    return {name: reported.get(name, (None, died)) for name, _, _ in cases}


def _virtual_size() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


class _CaseTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _CaseTimeout(f"still running after {CASE_SECONDS} s")


def _run_case(case: dict) -> tuple[int | str, str]:
    module, function = case["main"].split(":")
    main = getattr(importlib.import_module(module), function)
    err = io.StringIO()
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(case["argv"])
            except SystemExit as stop:
                code = stop.code
    except BaseException:  # noqa: BLE001 - a MemoryError, a traceback or the alarm: the row reports it
        code = "crash"
        err.write(traceback.format_exc())
    finally:
        signal.alarm(0)
    return code, err.getvalue()


def _main(argv: list[str]) -> int:
    headroom, cases_path, results_path = int(argv[0]), Path(argv[1]), Path(argv[2])
    request = json.loads(cases_path.read_text())
    for module in (*_PRELOAD, *request["preload"], *(case["main"].split(":")[0] for case in request["cases"])):
        importlib.import_module(module)
    limit = _virtual_size() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    for case in request["cases"]:
        started = time.perf_counter()
        code, err = _run_case(case)
        with open(results_path, "a") as handle:
            handle.write(json.dumps({"name": case["name"], "code": code, "err": err,
                                     "seconds": round(time.perf_counter() - started, 2)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
