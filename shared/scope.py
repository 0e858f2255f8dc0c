"""Which users photo-sync looks after: settings SYNC_ENABLED_ONLY, SYNC_INCLUDE_GUESTS,
SYNC_INCLUDE_GROUPS and SYNC_EXCLUDE_GROUPS. Pure: the caller fetches group membership."""

from __future__ import annotations

from . import reasons
from .graph import DirectoryUser
from .reasons import ReasonCode
from .settings import Settings


def uses_groups(settings: Settings) -> bool:
    return bool(settings.include_groups or settings.exclude_groups)


def scope_groups(settings: Settings) -> list[str]:
    return [*settings.include_groups, *settings.exclude_groups]


def out_of_scope(settings: Settings, user: DirectoryUser,
                 member_of: set[str]) -> ReasonCode | None:
    """Why this user is outside the configured scope, or None when photo-sync should sync them.

    `member_of` holds the ids (lowercase) of the configured groups the user belongs to.
    """
    if settings.enabled_only and not user.account_enabled:
        return reasons.ACCOUNT_DISABLED
    if not settings.include_guests and user.user_type == "Guest":
        return reasons.GUEST_EXCLUDED
    if settings.include_groups and not member_of & {g.lower() for g in settings.include_groups}:
        return reasons.NOT_IN_INCLUDE_GROUPS
    if member_of & {g.lower() for g in settings.exclude_groups}:
        return reasons.IN_EXCLUDE_GROUP
    return None
