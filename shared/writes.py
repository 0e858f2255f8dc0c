"""Every write the sync and `link-profiles` make, behind one small seam.

The sync decides; a writer carries the decision out. `SharePointWrites` performs the writes
(thumbnail files, profile properties, the state row, the per-user lease); `IntendedWrites` only
records them, so a dry run (and preflight's predictions) walks exactly the real run's decision code
and makes no write request. The one thing a dry run cannot know is whether SharePoint would accept
an app-only profile write: it answers as the tenant's recorded answer says (shared/state.py,
ProfileWritesRecord), and as refused while that answer is `untested`.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from .profile_writes import MakeWrite, ProfileWriteGate, ProfileWritesWithheld
from .sharepoint import ProfileWriteRefused, SharePointProfiles
from .state import StateStore, UserState

UNTESTED_NOTE = "profile writes untested: run preflight --write-test"


class Writes(Protocol):
    """What the sync may change, and nothing else."""

    dry_run: bool

    def on(self, sharepoint: SharePointProfiles) -> Writes:
        """The same writer, writing through another geo's SharePoint client (Multi-Geo)."""
        ...

    async def upload(self, stem: str, suffix: str, data: bytes) -> None: ...
    async def delete(self, stem: str, suffix: str) -> None: ...
    async def link_picture(self, upn: str, stem: str) -> None: ...
    async def reveal_picture(self, upn: str) -> None: ...
    async def unlink_picture(self, upn: str) -> None: ...
    async def save(self, state: UserState) -> None: ...
    async def acquire_lease(self, name: str, owner: str, seconds: float) -> bool: ...
    async def release_lease(self, name: str, owner: str) -> None: ...


class SharePointWrites:
    """Performs the writes. With a `gate` (the app's own identity), each profile write is made
    only as the tenant's recorded answer allows, and teaches it (shared/profile_writes.py);
    `link-profiles` signs in as an administrator, whose rights say nothing about the app's."""

    dry_run = False

    def __init__(self, sharepoint: SharePointProfiles, state: StateStore,
                 gate: ProfileWriteGate | None = None) -> None:
        self._sharepoint = sharepoint
        self._state = state
        self._gate = gate

    def on(self, sharepoint: SharePointProfiles) -> SharePointWrites:
        if sharepoint is self._sharepoint:
            return self
        return SharePointWrites(sharepoint, self._state, self._gate)

    async def upload(self, stem: str, suffix: str, data: bytes) -> None:
        await self._sharepoint.upload(stem, suffix, data)

    async def delete(self, stem: str, suffix: str) -> None:
        await self._sharepoint.delete(stem, suffix)

    async def link_picture(self, upn: str, stem: str) -> None:
        await self._profile_write(lambda: self._sharepoint.link_picture(upn, stem))

    async def reveal_picture(self, upn: str) -> None:
        await self._profile_write(lambda: self._sharepoint.reveal_picture(upn))

    async def unlink_picture(self, upn: str) -> None:
        await self._profile_write(lambda: self._sharepoint.unlink_picture(upn))

    async def _profile_write(self, make: MakeWrite) -> None:
        if self._gate is None:  # an administrator's write: nothing to learn about the app
            await make()
        else:
            await self._gate.write(make)

    async def save(self, state: UserState) -> None:
        await self._state.save(state)

    async def acquire_lease(self, name: str, owner: str, seconds: float) -> bool:
        return await self._state.acquire_lease(name, owner, seconds)

    async def release_lease(self, name: str, owner: str) -> None:
        await self._state.release_lease(name, owner)


class IntendedWrites:
    """Records the writes a real run would make, makes none. Profile writes succeed when the
    tenant's recorded answer is `allowed`, else they are refused as the real run would be."""

    dry_run = True

    def __init__(self, profile_writes: str,
                 withheld: ProfileWritesWithheld | None = None) -> None:
        self.profile_writes = profile_writes  # allowed | refused | untested
        self.withheld = withheld  # why the real run would not even try a profile write
        self.intended: Counter[str] = Counter()  # writes a real run would make, by kind

    def on(self, sharepoint: SharePointProfiles) -> IntendedWrites:
        return self

    async def upload(self, stem: str, suffix: str, data: bytes) -> None:
        self.intended["upload"] += 1

    async def delete(self, stem: str, suffix: str) -> None:
        self.intended["delete"] += 1

    async def link_picture(self, upn: str, stem: str) -> None:
        self._profile_write("link")

    async def reveal_picture(self, upn: str) -> None:
        self._profile_write("reveal")

    async def unlink_picture(self, upn: str) -> None:
        self._profile_write("unlink")

    def _profile_write(self, kind: str) -> None:
        self.intended[kind] += 1
        if self.withheld is not None:
            raise self.withheld
        if self.profile_writes != "allowed":
            raise ProfileWriteRefused(UNTESTED_NOTE if self.profile_writes == "untested"
                                      else "profile writes are recorded as refused", 403)

    async def save(self, state: UserState) -> None:
        self.intended["save"] += 1

    async def acquire_lease(self, name: str, owner: str, seconds: float) -> bool:
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        return None
