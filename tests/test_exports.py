"""`status` exports for Excel and scripts, their filters, the 80-column table, and `link-profiles`
fed with such an export: what an admin hands to colleagues and gets back."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from shared.operations import EXPORT_COLUMNS
from simulator.core import TenantSimulator
from simulator.images import PhotoSpec
from simulator.tenant import User
from tests.test_cli import cli
from tests.test_operations import admin_cli
from tests.test_sync import deliver, state_of

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("app_env")


def read_csv(text: str) -> list[dict[str, str]]:
    assert text.startswith("\ufeff"), "Excel needs the byte-order mark to read UTF-8"
    return list(csv.DictReader(io.StringIO(text[1:])))


@pytest.fixture
def mixed(sim: TenantSimulator) -> dict[str, User]:
    """Users in four outcomes, one with a long UPN and non-ASCII letters."""
    long_name = User(id="bbbbbbbb-0000-4000-8000-000000000001",
                     userPrincipalName="marija.sarić-kovačević.long.name.for.a.narrow.terminal"
                                       "@contoso.onmicrosoft.com",
                     displayName="Marija Šarić", photo=PhotoSpec(color="#3060a0"),
                     profile_linked=False)
    sim.add_user(long_name)
    users = {
        "updated": next(u for u in sim.users() if u.photo and u.photo.kind == "jpeg"
                        and u.accountEnabled and u.profile_linked),
        "needs_link": long_name,
        "no_photo": next(u for u in sim.users() if u.photo is None and u.accountEnabled),
        "failed": next(u for u in sim.users() if u.photo and u.photo.kind == "png-alpha"
                       and u.accountEnabled),
    }
    sim.set_photo(users["failed"].id, PhotoSpec(kind="corrupt"))
    for user in users.values():
        deliver(user.id)
    return users


def test_csv_has_one_row_per_user_with_codes_and_full_text(mixed: dict[str, User]) -> None:
    done = cli("status", "--csv")
    assert done.returncode == 0, done.stderr
    rows = {r["userId"]: r for r in read_csv(done.stdout)}
    assert list(read_csv(done.stdout)[0]) == list(EXPORT_COLUMNS)
    assert set(rows) == {u.id for u in mixed.values()}
    link = rows[mixed["needs_link"].id]
    assert link["upn"] == mixed["needs_link"].userPrincipalName  # non-ASCII kept
    assert (link["outcome"], link["reasonCode"]) == ("needs_profile_link", "app_only_link_refused")
    assert link["reason"] == state_of(mixed["needs_link"]).reason  # not truncated
    assert rows[mixed["failed"].id]["reasonCode"] == "image_corrupt"
    assert rows[mixed["no_photo"].id]["reasonCode"] == "no_photo"
    assert rows[mixed["updated"].id]["reasonCode"] == "thumbnails_replaced"
    for row in rows.values():  # when photo-sync last wrote the row, with its time zone
        assert datetime.fromisoformat(row["lastChange"]).tzinfo is not None


def test_outcome_and_code_filters(mixed: dict[str, User]) -> None:
    only = read_csv(cli("status", "--csv", "--outcome", "needs_profile_link").stdout)
    assert [r["userId"] for r in only] == [mixed["needs_link"].id]
    two = read_csv(cli("status", "--csv", "--outcome", "failed,no_photo").stdout)
    assert {r["userId"] for r in two} == {mixed["failed"].id, mixed["no_photo"].id}
    lines = cli("status", "--output", "jsonl", "--reason-code", "image_corrupt").stdout.splitlines()
    assert [json.loads(line)["userId"] for line in lines] == [mixed["failed"].id]
    assert cli("status", "--csv", "--outcome", "skipped").stdout.strip() == \
        "\ufeff" + ",".join(EXPORT_COLUMNS)


def test_unknown_filter_values_are_refused_with_the_choices() -> None:
    done = cli("status", "--outcome", "broken")
    assert done.returncode == 2 and "needs_profile_link" in done.stderr
    done = cli("status", "--reason-code", "nope")
    assert done.returncode == 2 and "unknown reason code" in done.stderr


def test_the_table_fits_80_columns_and_truncates_with_an_ellipsis(mixed: dict[str, User]) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    done = subprocess.run([sys.executable, "-m", "shared", "status", "--all-users"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80
    assert len([line for line in lines if "…" in line]) >= 2  # the long UPN and long reasons
    assert len([line for line in lines if "needs_profile_l" in line]) == 1


def test_link_profiles_takes_a_csv_export_as_its_list(sim: TenantSimulator,
                                                      mixed: dict[str, User],
                                                      tmp_path: Path) -> None:
    second = User(id="bbbbbbbb-0000-4000-8000-000000000002",
                  userPrincipalName="second.hire@contoso.onmicrosoft.com", displayName="Second",
                  photo=PhotoSpec(color="#a03060"), profile_linked=False)
    sim.add_user(second)
    deliver(second.id)
    export = tmp_path / "waiting.csv"
    export.write_text(cli("status", "--csv", "--outcome", "needs_profile_link").stdout,
                      encoding="utf-8")
    rows = read_csv(export.read_text(encoding="utf-8"))
    assert {r["userId"] for r in rows} == {second.id, mixed["needs_link"].id}
    # the admin keeps one of the two, as Excel saves it (BOM, CRLF), plus a user already linked
    kept = [r for r in rows if r["userId"] == mixed["needs_link"].id]
    kept.append({**kept[0], "userId": mixed["updated"].id})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(kept)
    export.write_text("\ufeff" + buffer.getvalue(), encoding="utf-8")

    done = admin_cli("link-profiles", "--sign-in", "azure-cli", "--from", str(export), "--output", "jsonl")
    assert done.returncode == 1, done.stderr  # one listed user was not waiting for a link
    results = {json.loads(line)["userId"]: json.loads(line) for line in done.stdout.splitlines()}
    assert results[mixed["needs_link"].id]["linked"] is True
    assert not results[mixed["updated"].id]["linked"]
    assert "not waiting" in results[mixed["updated"].id]["reason"]
    assert sim.profile(mixed["needs_link"].id)["PictureURL"].endswith("_MThumb.jpg")
    assert sim.profile(second.id)["PictureURL"] == ""  # not in the list: untouched
    assert state_of(mixed["needs_link"]).reason_code == "linked_by_admin"


def test_a_bad_csv_is_refused_before_anything_is_linked(sim: TenantSimulator,
                                                        mixed: dict[str, User],
                                                        tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"userId\n{mixed['needs_link'].id}\n../etc/passwd\n", encoding="utf-8")
    done = admin_cli("link-profiles", "--sign-in", "azure-cli", "--from", str(bad))
    assert done.returncode == 2 and "line 3" in done.stderr
    assert sim.profile(mixed["needs_link"].id)["PictureURL"] == ""
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,mail\nA,a@contoso.com\n", encoding="utf-8")
    done = admin_cli("link-profiles", "--sign-in", "azure-cli", "--from", str(wrong))
    assert done.returncode == 2 and "userId" in done.stderr
