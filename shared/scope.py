"""Which users photo-sync looks after: settings SYNC_ENABLED_ONLY, SYNC_INCLUDE_GUESTS,
SYNC_INCLUDE_GROUPS and SYNC_EXCLUDE_GROUPS. Pure: the caller fetches group membership."""

from __future__ import annotations

from .graph import DirectoryUser
from .settings import Settings


def uses_groups(settings: Settings) -> bool:
    return bool(settings.include_groups or settings.exclude_groups)


def scope_groups(settings: Settings) -> list[str]:
    return [*settings.include_groups, *settings.exclude_groups]


def out_of_scope(settings: Settings, user: DirectoryUser, member_of: set[str]) -> str | None:
    """Why this user is outside the configured scope, or None when photo-sync should sync them.

    `member_of` holds the ids (lowercase) of the configured groups the user belongs to.
    """
    if settings.enabled_only and not user.account_enabled:
        return "account is disabled"
    if not settings.include_guests and user.user_type == "Guest":
        return "guest accounts are excluded (SYNC_INCLUDE_GUESTS=false)"
    if settings.include_groups and not member_of & {g.lower() for g in settings.include_groups}:
        return "not in any group of SYNC_INCLUDE_GROUPS"
    if member_of & {g.lower() for g in settings.exclude_groups}:
        return "in a group of SYNC_EXCLUDE_GROUPS"
    return None
