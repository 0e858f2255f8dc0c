"""Stable reason codes: why a user has the outcome photo-sync recorded, in a word scripts match.

Every outcome carries a code beside its human sentence. The sentence may change wording or carry
details (sizes, limits); the code never changes meaning, so KQL queries, alert rules, CSV filters
and Excel pivots can rely on it. docs/troubleshooting.md documents each code with what an admin
should do (a test keeps the two lists equal). Codes marked `reserved` name situations the code does
not produce yet; their names are fixed so the work that adds them uses these.
"""

from __future__ import annotations

from dataclasses import dataclass

UPDATED, UNCHANGED, PHOTO_REMOVED, NO_PHOTO = "updated", "unchanged", "photo_removed", "no_photo"
NEEDS_PROFILE_LINK, SKIPPED, FAILED = "needs_profile_link", "skipped", "failed"


@dataclass(frozen=True)
class ReasonCode:
    """One code: the outcomes it goes with, its default sentence and the admin's next step."""

    code: str
    outcomes: tuple[str, ...]
    sentence: str
    action: str
    reserved: bool = False

    def __str__(self) -> str:
        return self.code


REGISTRY: dict[str, ReasonCode] = {}


def _code(code: str, outcomes: str | tuple[str, ...], sentence: str, action: str,
          reserved: bool = False) -> ReasonCode:
    entry = ReasonCode(code, (outcomes,) if isinstance(outcomes, str) else outcomes, sentence,
                       action, reserved)
    assert code not in REGISTRY, code
    REGISTRY[code] = entry
    return entry


# updated
UPLOADED_AND_LINKED = _code(
    "uploaded_and_linked", UPDATED, "thumbnails uploaded and profile linked", "Nothing.")
THUMBNAILS_REPLACED = _code(
    "thumbnails_replaced", UPDATED, "thumbnails replaced where the profile points",
    "Nothing. Browsers and Microsoft 365 clients may show the old picture until their caches "
    "expire.")
PLACEHOLDER_FLAG_CLEARED = _code(
    "placeholder_flag_cleared", UPDATED,
    "thumbnails replaced and the profile's placeholder flag cleared", "Nothing.")
LINKED_BY_ADMIN = _code(
    "linked_by_admin", UPDATED, "profile linked by an administrator", "Nothing.")

# unchanged
ETAG_UNCHANGED = _code(
    "etag_unchanged", UNCHANGED, "photo etag unchanged",
    "Nothing. If the user did change their photo, Microsoft 365 has not finished storing it yet; "
    "`POST /api/sync {\"users\": [\"<upn>\"], \"force\": true}` re-uploads regardless.")
SAME_PICTURE = _code(
    "same_picture", UNCHANGED, "new etag, same picture",
    "Nothing: Graph reports a new etag but the thumbnails would be identical to SharePoint's.")

# photo_removed
THUMBNAILS_DELETED = _code(
    "thumbnails_deleted", PHOTO_REMOVED, "thumbnails no profile showed were deleted",
    "Nothing: the user removed their photo in Microsoft 365 before their profile was linked.")
UNLINK_REFUSED_PLACEHOLDER = _code(
    "unlink_refused_placeholder", PHOTO_REMOVED,
    "photo replaced by a neutral placeholder; the profile link stays until an administrator "
    "unlinks it",
    "Optional: a SharePoint administrator clears the profile's PictureURL (SharePoint admin "
    "center > User profiles) so SharePoint shows its own placeholder. Nobody sees a broken "
    "image meanwhile.")
PROFILE_UNLINKED = _code(
    "profile_unlinked", PHOTO_REMOVED,
    "profile set to SharePoint's placeholder; its old thumbnails now show a neutral placeholder",
    "Nothing. The files stay (sites' cached pictures may still name them) and show a neutral "
    "placeholder, never the person's old photo.")

# no_photo
NO_PHOTO_SET = _code(
    "no_photo", NO_PHOTO, "no photo in Microsoft 365",
    "Nothing, or ask the user to set a photo in Outlook, Teams or their Microsoft 365 profile.")

# needs_profile_link
APP_ONLY_LINK_REFUSED = _code(
    "app_only_link_refused", NEEDS_PROFILE_LINK,
    "thumbnails uploaded; SharePoint refuses the profile link to this app-only identity: a "
    "SharePoint admin links it once",
    "A SharePoint administrator runs `python -m shared link-profiles` once (or the user signs in "
    "to SharePoint or OneDrive once). Export the list with "
    "`python -m shared status --outcome needs_profile_link --csv`.")
PROFILE_LINKS_ELSEWHERE = _code(
    "profile_links_elsewhere", NEEDS_PROFILE_LINK,
    "the profile points at a picture outside the photos folder",
    "Check the user's PictureURL (SharePoint admin center > User profiles): a picture set by "
    "another tool or by hand. photo-sync never overwrites files outside the photos folder; "
    "`link-profiles` points the profile at the files photo-sync uploaded.")
PLACEHOLDER_FLAG_REFUSED = _code(
    "placeholder_flag_refused", NEEDS_PROFILE_LINK,
    "thumbnails replaced, but the profile flags its picture as a placeholder "
    "(SPS-PicturePlaceholderState=1) and SharePoint refuses this app-only identity the change",
    "A SharePoint administrator runs `python -m shared link-profiles` once, which clears the "
    "flag (or the user signs in to SharePoint or OneDrive once).")
PROFILE_WRITES_REFUSED = _code(
    "profile_writes_refused", NEEDS_PROFILE_LINK,
    "thumbnails uploaded; SharePoint is known to refuse this app's profile writes, so none was "
    "tried: a SharePoint admin links it",
    "Nothing is tried until the daily probe (PROFILE_WRITE_PROBE_HOURS); the detail says since "
    "when writes are refused. A SharePoint administrator runs `python -m shared link-profiles` "
    "(weekly, docs/operations.md), or grants `grant-permissions.sh --profile-writes`: the next "
    "probe notices it and the next reconciliation links everyone waiting.")
PROFILE_WRITES_OFF = _code(
    "profile_writes_off", NEEDS_PROFILE_LINK,
    "thumbnails uploaded; PROFILE_WRITES=off: the app makes no profile write",
    "A SharePoint administrator runs `python -m shared link-profiles` (weekly, "
    "docs/operations.md), or set PROFILE_WRITES=auto where the app may write profiles.")

# skipped
USER_NOT_FOUND = _code(
    "user_not_found", SKIPPED, "no such user in the directory",
    "Nothing if the account was deleted. Otherwise check the object id or UPN you gave.")
ACCOUNT_DISABLED = _code(
    "account_disabled", SKIPPED, "account is disabled",
    "Nothing. Set SYNC_ENABLED_ONLY=false to sync disabled accounts too.")
GUEST_EXCLUDED = _code(
    "guest_excluded", SKIPPED, "guest accounts are excluded (SYNC_INCLUDE_GUESTS=false)",
    "Nothing, or set SYNC_INCLUDE_GUESTS=true.")
NOT_IN_INCLUDE_GROUPS = _code(
    "not_in_include_groups", SKIPPED, "not in any group of SYNC_INCLUDE_GROUPS",
    "Add the user to one of the SYNC_INCLUDE_GROUPS groups if they should be synced.")
IN_EXCLUDE_GROUP = _code(
    "in_exclude_group", SKIPPED, "in a group of SYNC_EXCLUDE_GROUPS",
    "Remove the user from the SYNC_EXCLUDE_GROUPS group if they should be synced.")
PROFILE_MISSING = _code(
    "profile_missing", SKIPPED, "SharePoint has no user profile for this account yet",
    "Usually nothing: SharePoint creates profiles from Entra ID within a day or two of a new "
    "account; the next reconciliation retries. If it persists, check the user is licensed for "
    "SharePoint.")

# failed
IMAGE_EMPTY = _code(
    "image_empty", FAILED, "the photo is empty (0 bytes)",
    "Ask the user (or an Exchange admin) to upload the photo again. SharePoint keeps the "
    "previous picture; photo-sync retries when the photo changes.")
IMAGE_TOO_LARGE = _code(
    "image_too_large", FAILED, "the photo is over MAX_PHOTO_BYTES",
    "Ask for a smaller photo, or raise MAX_PHOTO_BYTES.")
IMAGE_TOO_MANY_PIXELS = _code(
    "image_too_many_pixels", FAILED, "the photo is over MAX_PHOTO_PIXELS",
    "Ask for a smaller photo, or raise MAX_PHOTO_PIXELS.")
IMAGE_FORMAT_REFUSED = _code(
    "image_format_refused", FAILED, "the image format is not accepted",
    "Ask for a JPEG or PNG photo.")
IMAGE_UNREADABLE = _code(
    "image_unreadable", FAILED, "the photo is not an image Pillow can read",
    "Ask the user to upload the photo again as JPEG or PNG.")
IMAGE_CORRUPT = _code(
    "image_corrupt", FAILED, "the photo is corrupt or truncated",
    "Ask the user to upload the photo again.")
IMAGE_BOMB = _code(
    "image_bomb", FAILED, "the photo looks like a decompression bomb",
    "Ask the user to upload an ordinary photo; report it to security if it was deliberate.")
TRANSIENT_ERROR = _code(
    "transient_error", FAILED,
    "a Graph, SharePoint or storage error a retry may fix (throttling, 5xx, network)",
    "Usually nothing: the next reconciliation retries. If many users show it, see "
    "'Throttling' and the poison queue below.")

# link-profiles results (the user stays `needs_profile_link` until linked)
ADMIN_LINK_REFUSED = _code(
    "admin_link_refused", NEEDS_PROFILE_LINK,
    "SharePoint refused the profile write to the signed-in identity",
    "Sign in to `link-profiles` as a SharePoint administrator (not the app's identity).")
LINK_ERROR = _code(
    "link_error", NEEDS_PROFILE_LINK, "SharePoint failed while linking the profile",
    "Run `link-profiles` again: it continues with the users not linked yet.")

# the photos folder (learned from linked profiles, read from the library, or the setting)
PHOTOS_FOLDER_NOT_FOUND = _code(
    "photos_folder_not_found", FAILED, "the photos folder of the My Site host could not be found",
    "The User Photos library appears with the first profile picture SharePoint stores; until "
    "then, or if discovery picks the wrong folder, set SHAREPOINT_PHOTOS_FOLDER, e.g. "
    "'User Photos/Profile Pictures' (docs/settings.md). The next reconciliation retries.")

GEO_UNKNOWN = _code(
    "geo_unknown", FAILED, "the user's profile lives in a SharePoint geo photo-sync does not know",
    "Multi-Geo tenant: add the geo's My Site URL to SHAREPOINT_GEOS (docs/settings.md), or grant "
    "Microsoft Graph Sites.Read.All so photo-sync discovers the geos. The next reconciliation "
    "retries.")


def describe(code: str) -> ReasonCode | None:
    """The registry entry for a code ('' and unknown codes: None)."""
    return REGISTRY.get(code)
