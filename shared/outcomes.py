"""What one user's sync ended with: the outcome kinds and the result record.

A module of its own, below sync, telemetry and the CLI, so that every layer can name an outcome
without importing the sync itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    PHOTO_REMOVED = "photo_removed"
    NO_PHOTO = "no_photo"
    NEEDS_PROFILE_LINK = "needs_profile_link"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class SyncResult:
    """One user's outcome, with a reason a person can act on."""

    user_id: str
    upn: str
    outcome: Outcome
    reason: str = ""
    code: str = ""  # stable reason code, shared/reasons.py
    dry_run: bool = False  # what a real run would do; nothing was written

    def as_dict(self) -> dict[str, str | bool]:
        row: dict[str, str | bool] = {"userId": self.user_id, "upn": self.upn,
                                      "outcome": self.outcome.value, "reasonCode": self.code,
                                      "reason": self.reason}
        if self.dry_run:
            row["dry_run"] = True
        return row
