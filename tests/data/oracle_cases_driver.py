#!/usr/bin/env python3
"""Guest side of tests/test_oracles_vm.py: run oracle cases one after another in this guest.

Uploaded (as the entry of an ad-hoc reproducer) with `cases.json`, `shim.py` (the lying tool of
tests/test_oracle_shims.py) and `bugs/` (reproducers/lib and each reproducer). Each case runs the
way the host tests run a reproducer (tests/test_reproducers_host.run_repro): the library and the
reproducer copied into a fresh directory, `timeout T bash run.sh`, the shim first on PATH when the
case has rules. One JSON line per case goes to out/results.jsonl (fetched by the probe); nothing is
judged here - the host applies the same assertions as on the host.

A case whose run says skip without the text it expects is run once more (`retry_skip`): under TCG
a transfer can time out before the read-back the case is about (the VM tests ask a skipped kernel
once more for the same reason). Both attempts are recorded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
HOST_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/bin:/bin:/usr/local/bin"  # as the host tests
WORK = "/root/kboracles"


def namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def run_once(case: dict, attempt: int) -> dict:
    work = os.path.join(WORK, f"{case['name']}-{attempt}")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(os.path.join(HERE, "bugs", "lib"), work)
    shutil.copytree(os.path.join(HERE, "bugs", case["bug"]), work, dirs_exist_ok=True)
    sfx = uuid.uuid4().hex[:6]
    env = {"PATH": HOST_PATH, "HOME": work, "LANG": "C.UTF-8", "KBISECT_OUT": os.path.join(work, "out"),
           "KBISECT_SFX": sfx}
    shim_dir = os.path.join(work, ".shim")
    rules = case.get("rules") or {}
    if rules:
        os.mkdir(shim_dir)
        for tool in rules:
            path = os.path.join(shim_dir, tool)
            shutil.copyfile(os.path.join(HERE, "shim.py"), path)
            os.chmod(path, 0o755)
        env.update(PATH=f"{shim_dir}:{HOST_PATH}", KBSHIM_RULES=json.dumps(rules))
    env.update(case.get("env") or {})
    cmd = ["timeout", str(case["timeout"]), "bash", "run.sh"]
    if case.get("hide"):
        # what the kernel would lack (gro-inner-th without BTF: an empty tmpfs on /sys/kernel/btf),
        # hidden in a mount namespace of this run only; a mount that fails is exit 99, not a skip
        cmd = ["unshare", "--mount", "--propagation", "private", "bash", "-c",
               'for d in "${@:2:$1}"; do mount -t tmpfs kbhide "$d" || exit 99; done; exec "${@:$1+2}"',
               "hide", str(len(case["hide"])), *case["hide"], *cmd]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    fired_file = os.path.join(shim_dir, f"fired.{case.get('tool', '')}")
    fired = open(fired_file).read() if os.path.exists(fired_file) else ""
    return {"name": case["name"], "attempt": attempt, "code": proc.returncode, "line": lines[-1] if lines else "",
            "fired": fired, "left": [n for n in namespaces() if n.endswith(f"-{sfx}")],
            "err": proc.stderr[-3000:]}


def main() -> int:
    with open(os.path.join(HERE, "cases.json")) as fh:
        cases = json.load(fh)
    out = os.path.join(HERE, "out")
    os.makedirs(out, exist_ok=True)
    for case in cases:
        for attempt in range(1, 3):
            res = run_once(case, attempt)
            with open(os.path.join(out, "results.jsonl"), "a") as fh:
                fh.write(json.dumps(res) + "\n")
            print(f"{case['name']} (attempt {attempt}): {res['code']} {res['line']}", flush=True)
            wanted = case.get("expect", "")
            if not (case.get("retry_skip") and res["code"] == 125 and (not wanted or wanted not in res["line"])):
                break
    print(f"{len(cases)} oracle cases run in this guest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
