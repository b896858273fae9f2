"""Fault injection for tests that run the real console script: put this folder first on PYTHONPATH.

Python imports ``sitecustomize`` at start-up, before ``s2sd`` runs; this one reads two test-only variables (the
product knows nothing of them):

- ``S2SD_TEST_FAULT=module:Qualified.name:action[:argument]`` wraps that function; after
  ``S2SD_TEST_FAULT_AFTER`` calls (default 0) that pass, the next call does ``action``:
  ``sigint`` (Ctrl-C, as a user would press it, then the call goes on), ``pause`` (touch the file ``argument``,
  then sleep until killed), ``pause-after`` (the call runs, then as ``pause``), or an errno name such as
  ``ENOSPC``, ``EROFS`` or ``EACCES`` (raise that OSError, as the operating system would);
- ``S2SD_TEST_FREE_BYTES=N`` makes ``shutil.disk_usage`` report N bytes free.
"""

from __future__ import annotations

import os


def _inject_fault(spec: str) -> None:
    import errno
    import functools
    import importlib
    import signal
    import time

    module_name, qualname, action, *argument = spec.split(":", 3)
    owner = importlib.import_module(module_name)
    *parents, name = qualname.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    passing = int(os.environ.get("S2SD_TEST_FAULT_AFTER", "0"))
    calls = []

    def pause() -> None:
        with open(argument[0], "w") as marker:
            marker.write(str(os.getpid()))
        time.sleep(3600)

    @functools.wraps(original)
    def faulty(*args, **kwargs):
        calls.append(1)
        if len(calls) <= passing:
            return original(*args, **kwargs)
        if action == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
            return original(*args, **kwargs)
        if action == "pause":
            pause()
        if action == "pause-after":
            result = original(*args, **kwargs)
            pause()
            return result
        code = getattr(errno, action)
        target = getattr(args[0], "path", None) if args else None
        if target is not None and len(args) > 1 and isinstance(args[1], str) and " " not in args[1]:  # a file name
            target = target / args[1]
        raise OSError(code, os.strerror(code), None if target is None else str(target))

    setattr(owner, name, faulty)


def _fake_free_space(free: int) -> None:
    import shutil

    real = shutil.disk_usage

    def disk_usage(path):
        total, used, _ = real(path)
        return type(real(path))(total, used, free)

    shutil.disk_usage = disk_usage


if os.environ.get("S2SD_TEST_FAULT"):
    _inject_fault(os.environ["S2SD_TEST_FAULT"])
if os.environ.get("S2SD_TEST_FREE_BYTES"):
    _fake_free_space(int(os.environ["S2SD_TEST_FREE_BYTES"]))
