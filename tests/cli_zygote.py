"""``python -m lora_lightning ARGS`` without paying Python's start-up for each run (about 10 s here).

A zygote process imports lora_lightning once (torch, Lightning, transformers, peft, bitsandbytes),
then forks one child per command. Each child is a fresh process as far as a run can tell: its own
pid, working folder, environment, stdin from /dev/null, stdout and stderr to files, ``sys.argv`` as
the console script sets it, the module run as ``__main__``, and the interpreter's own exit (atexit
handlers, a traceback and status 1 on an uncaught exception, ``-N`` when killed by signal N). Only
the imports are shared, and the zygote never runs a tensor operation, so no thread pool exists when
it forks. Settings read once at import (``TORCH_COMPILE_DISABLE``, ``HF_HUB_OFFLINE``) are the
zygote's. Runs whose processes are the point (DDP ranks, signals sent by the test) or that change
such a setting keep :func:`subprocess.run` (``run_cli(..., fresh=True)``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ZYGOTE = r"""
import json, os, runpy, sys, warnings
import lora_lightning.cli  # the slow part, once
sys.stdout.flush()
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, fd)
            os.close(out)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if request["env"].get("PYTHONWARNINGS") == "ignore":
            warnings.simplefilter("ignore")
        sys.argv = [sys.executable, *request["args"]]
        runpy.run_module("lora_lightning", run_name="__main__", alter_sys=True)
        sys.exit(0)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """One zygote per test process (started on first use); commands run one at a time."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def start(self, cwd: Path) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            self.process = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE],
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        return self.process

    def run(self, args: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            zygote = self.start(cwd)
            request = {"args": args, "cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
            zygote.stdin.write(json.dumps(request) + "\n")
            zygote.stdin.flush()
            pid = json.loads(zygote.stdout.readline())["pid"]
            reply: dict = {}
            reader = threading.Thread(target=lambda: reply.update(json.loads(zygote.stdout.readline())))
            reader.start()
            reader.join(timeout)
            if reader.is_alive():
                os.killpg(pid, 9)
                reader.join()
                raise subprocess.TimeoutExpired(["lora-lightning", *args], timeout)
            stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
            return subprocess.CompletedProcess(["lora-lightning", *args], reply["returncode"], stdout, stderr)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
