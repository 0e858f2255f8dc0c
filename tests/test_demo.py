"""`make demo` as a new user sees it, and as CI logs it: not a terminal, on any terminal width."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_TENANT = ROOT / "simulator" / "demo_tenant.json"


def test_the_demo_fits_80_columns_names_users_and_ends_with_the_next_step() -> None:
    env = {**os.environ, "COLUMNS": "200"}  # a wide terminal's setting, while stdout is a pipe
    done = subprocess.run([sys.executable, "-m", "simulator.demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=540)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    too_wide = [line for line in lines if len(line) > 80]
    assert not too_wide, f"{len(too_wide)} lines wider than 80 columns:\n" + "\n".join(too_wide)

    users = {u["userPrincipalName"].rsplit("@", 1)[0]
             for u in json.loads(DEMO_TENANT.read_text())["users"]}
    tables = 0
    for i, line in enumerate(lines):
        if not (line.strip() and set(line.strip()) == {"─"} and i and "user" in lines[i - 1]):
            continue  # a compact table's header rule: rows follow until the next title or rule
        tables += 1
        for row in lines[i + 1:]:
            if not row.strip() or row.startswith(("What ", "─", "Requests ")):
                break
            assert row.split()[0] in users, f"a row names no user: {row!r}"
    assert tables >= 3, "the per-user tables were not found"

    assert "$ python -m shared link-profiles --sign-in azure-cli" in lines
    assert "docs/deploy.md" in lines[-1] and "azd up" in lines[-1]
