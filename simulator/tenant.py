"""Tenant model: users, options, the JSON tenant file and a large-tenant generator."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .images import PhotoSpec
from .tokens import DEFAULT_TENANT_ID

DEFAULT_FOLDER = "User Photos/Profile Pictures"


@dataclass(slots=True)
class User:
    """A directory user as Graph and the SharePoint user profile see it."""

    id: str
    userPrincipalName: str
    displayName: str
    mail: str | None = None
    userType: str = "Member"
    accountEnabled: bool = True
    photo: PhotoSpec | None = None
    profile_linked: bool = True
    # How a linked profile names its thumbnails. "object-id": what SharePoint writes when it links a
    # profile itself (pnp/cli-microsoft365 docs/docs/cmd/spo/userprofile/userprofile-get.mdx: PictureURL
    # `.../User%20Photos/Profile%20Pictures/78ccf530-..._MThumb.jpg`, the GUID = msOnline-ObjectId).
    # "upn": older and admin-linked profiles (pnp/PnP Samples/Core.ProfilePictureUploader,
    # `adele_vance_contoso_com_MThumb.jpg`).
    # Guests (`john_fabrikam.com#EXT#@contoso.onmicrosoft.com`): either form. ASSUMPTION: no public
    # source shows a guest's thumbnail name (shared/notes/m365-facts.md: "naming unconfirmed"); the
    # "upn" form applies PnP's rule unchanged, so the name keeps `#EXT#`
    # (`john_fabrikam_com#EXT#_contoso_onmicrosoft_com_MThumb.jpg`), which only the ResourcePath
    # APIs can address (learn.microsoft.com/sharepoint/dev/sp-add-ins/
    # working-with-folders-and-files-with-rest). Preflight's survey reports which form a tenant
    # uses.
    picture_naming: str = "object-id"
    # Multi-Geo (SharePoint/sp-dev-docs docs/solution-guidance/multigeo-userprofileexperience.md):
    # `geo` is where the user's profile and personal site live ("" = the default geo, else a
    # satellite's data location code); `preferredDataLocation` is the Entra property that decides
    # where a personal site is *created*, so it can differ from `geo` (a profile stays where the
    # personal site was made); `personal_site` says whether the OneDrive exists yet (Graph mySite
    # is only there for users who have one).
    geo: str = ""
    preferredDataLocation: str | None = None
    personal_site: bool = True
    # When the account was created: Graph's read-only `createdDateTime`, ISO 8601 in UTC, "returned
    # only on $select" (microsoft-graph-docs-contrib api-reference/v1.0/resources/user.md). None for
    # users created before Graph kept it (the same page: null for some older accounts).
    createdDateTime: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "User":
        """Build from a tenant-file user entry (``id`` defaults to a UUID derived from the UPN)."""
        upn = data["userPrincipalName"]
        photo = data.get("photo")
        return cls(
            id=data.get("id") or str(uuid.uuid5(uuid.NAMESPACE_URL, "user:" + upn.lower())),
            userPrincipalName=upn,
            displayName=data.get("displayName") or upn.split("@")[0],
            mail=data.get("mail", None if "#EXT#" in upn else upn),
            userType=data.get("userType", "Member"),
            accountEnabled=bool(data.get("accountEnabled", True)),
            photo=PhotoSpec.from_json(photo) if photo else None,
            profile_linked=bool(data.get("profileLinked", True)),
            picture_naming=_naming(data.get("pictureNaming", "object-id")),
            createdDateTime=data.get("createdDateTime"),
            geo=str(data.get("geo") or "").upper(),
            preferredDataLocation=data.get("preferredDataLocation") or None,
            personal_site=bool(data.get("personalSite", True)),
        )

    def to_json(self) -> dict[str, Any]:
        """Tenant-file form of this user."""
        return {
            "id": self.id, "userPrincipalName": self.userPrincipalName, "displayName": self.displayName,
            "mail": self.mail, "userType": self.userType, "accountEnabled": self.accountEnabled,
            "profileLinked": self.profile_linked, "pictureNaming": self.picture_naming,
            "photo": self.photo.to_json() if self.photo else None,
            **({"createdDateTime": self.createdDateTime} if self.createdDateTime else {}),
            "geo": self.geo, "preferredDataLocation": self.preferredDataLocation,
            "personalSite": self.personal_site,
        }


PICTURE_NAMINGS = ("object-id", "upn")


def _naming(value: Any) -> str:
    if value not in PICTURE_NAMINGS:
        raise ValueError(f"pictureNaming must be one of {PICTURE_NAMINGS}")
    return str(value)


@dataclass
class TenantOptions:
    """Behaviour switches. ``app_only_property_writes``: "refuse" | "allow"."""

    app_only_property_writes: str = "refuse"
    no_photo_metadata_style: str = "404"  # or "1x1"
    # Pixel size of the L thumbnails SharePoint made itself: 200 in PnP's uploader and most tools,
    # 300 where SharePoint's own UserProfilePhotos.CreateThumbnail made them ("Large = 300x300 px,
    # Medium = 72x72 px, Small = 48x48 px", thesharepointfarm.com, "User Profile Pictures,
    # Exchange 2013, and SharePoint"; shared/notes/m365-facts.md). Tenants differ.
    large_thumbnail_px: int = 200
    # Licences `GET /subscribedSkus` reports (prepaidUnits.enabled); None: one per user
    licences: int | None = None

    def validate(self) -> None:
        """Raise ValueError on unknown option values."""
        if self.app_only_property_writes not in ("refuse", "allow"):
            raise ValueError("app_only_property_writes must be 'refuse' or 'allow'")
        if self.no_photo_metadata_style not in ("404", "1x1"):
            raise ValueError("no_photo_metadata_style must be '404' or '1x1'")


@dataclass
class GeoLocation:
    """A satellite geo location of a Multi-Geo tenant: its own My Site and admin hosts (and root
    site), whose User Photos folder is named in that geo's language (sp-dev-docs
    multigeo-discovery.md: "language-specific tenant admin, root, and my site URLs"; the German
    folder "Profilbilder", pnp/PnP #1419)."""

    code: str                      # data location code, e.g. "EUR" (multigeo-discovery.md)
    photos_folder: str = DEFAULT_FOLDER
    hostname: str = ""             # the root site's host name Graph reports, e.g. contosoeur.sharepoint.com

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "GeoLocation":
        code = str(data["code"]).upper()
        return cls(code=code, photos_folder=(data.get("mysiteFolder") or DEFAULT_FOLDER).strip("/"),
                   hostname=data.get("hostname") or f"contoso{code.lower()}.sharepoint.com")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "mysiteFolder": self.photos_folder, "hostname": self.hostname}


@dataclass
class Tenant:
    """A whole simulated tenant."""

    tenant_id: str = DEFAULT_TENANT_ID
    domain: str = "contoso.onmicrosoft.com"
    photos_folder: str = DEFAULT_FOLDER
    users: list[User] = field(default_factory=list)
    options: TenantOptions = field(default_factory=TenantOptions)
    groups: dict[str, list[str]] = field(default_factory=dict)  # group id -> member ids or UPNs
    # Multi-Geo: the default geo's data location code ("" for a single-geo tenant, whose root site
    # reports dataLocationCode "" in multigeo-discovery.md) and the satellite geos.
    default_geo: str = ""
    satellites: list[GeoLocation] = field(default_factory=list)
    hostname: str = "contoso.sharepoint.com"  # the default geo's root site host name

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Tenant":
        """Parse the tenant-file JSON document."""
        opts = data.get("options") or {}
        options = TenantOptions(
            app_only_property_writes=opts.get("appOnlyPropertyWrites", "refuse"),
            no_photo_metadata_style=str(opts.get("noPhotoMetadataStyle", "404")),
            large_thumbnail_px=int(opts.get("largeThumbnailPx", 200)),
            licences=opts.get("licences"),
        )
        options.validate()
        return cls(
            tenant_id=data.get("tenantId") or DEFAULT_TENANT_ID,
            domain=data.get("domain", "contoso.onmicrosoft.com"),
            photos_folder=(data.get("mysiteFolder") or DEFAULT_FOLDER).strip("/"),
            users=[User.from_json(u) for u in data.get("users", [])],
            options=options,
            groups={g["id"]: list(g.get("members", [])) for g in data.get("groups", [])},
            default_geo=str(data.get("defaultGeo") or "").upper(),
            satellites=[GeoLocation.from_json(g) for g in data.get("satellites", [])],
            hostname=data.get("hostname") or "contoso.sharepoint.com",
        )

    @classmethod
    def load(cls, path: str | Path) -> "Tenant":
        """Read a tenant file."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_json(self) -> dict[str, Any]:
        """Tenant-file JSON document."""
        return {
            "tenantId": self.tenant_id, "domain": self.domain, "mysiteFolder": self.photos_folder,
            "options": {"appOnlyPropertyWrites": self.options.app_only_property_writes,
                        "noPhotoMetadataStyle": self.options.no_photo_metadata_style,
                        "largeThumbnailPx": self.options.large_thumbnail_px,
                        "licences": self.options.licences},
            "users": [u.to_json() for u in self.users],
            "groups": [{"id": gid, "members": members} for gid, members in self.groups.items()],
            "defaultGeo": self.default_geo, "satellites": [g.to_json() for g in self.satellites],
            "hostname": self.hostname,
        }

    def save(self, path: str | Path) -> None:
        """Write a tenant file."""
        Path(path).write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


_PALETTE = ("#3366cc", "#cc3333", "#33aa55", "#aa33aa", "#ff9900", "#009999", "#666666", "#99cc00")


def make_tenant(
    n_users: int,
    photo_share: int = 10,
    *,
    with_photo_ratio: float = 0.8,
    linked_ratio: float = 1.0,
    photo_size: int = 648,
    domain: str = "contoso.onmicrosoft.com",
    tenant_id: str = DEFAULT_TENANT_ID,
    seed: int = 1,
) -> Tenant:
    """Generate a large tenant cheaply (deterministic for a given ``seed``).

    ``photo_share`` is the number of distinct photo specs (JPEG, ``photo_size`` px square) that the
    users with photos share round-robin, so only that many images are ever rendered.
    ``with_photo_ratio`` / ``linked_ratio`` are the fractions of users with a photo / a linked
    SharePoint profile (spread evenly, not randomly).
    """
    specs = [PhotoSpec("jpeg", photo_size, photo_size, _PALETTE[i % len(_PALETTE)] if i < len(_PALETTE)
                       else "#%06x" % ((i * 2654435761) & 0xFFFFFF)) for i in range(max(1, photo_share))]
    base = seed << 64
    users = []
    photo_acc = linked_acc = 0.0
    for i in range(n_users):
        photo_acc += with_photo_ratio
        linked_acc += linked_ratio
        has_photo = photo_acc >= 1.0
        linked = linked_acc >= 1.0
        if has_photo:
            photo_acc -= 1.0
        if linked:
            linked_acc -= 1.0
        upn = f"user{i:06d}@{domain}"
        users.append(User(
            id=str(uuid.UUID(int=base | i, version=4)),
            userPrincipalName=upn,
            displayName=f"User {i:06d}",
            mail=upn,
            photo=specs[i % len(specs)] if has_photo else None,
            profile_linked=linked,
        ))
    return Tenant(tenant_id=tenant_id, domain=domain, users=users)


GERMAN_FOLDER = "User Photos/Profilbilder"  # the German My Site's photos folder (pnp/PnP #1419)


def make_multigeo_tenant(n_users: int, **kwargs: Any) -> Tenant:
    """A three-geo tenant like the one in sp-dev-docs multigeo-discovery.md: default NAM, EUR with a
    German-language My Site (photos folder "Profilbilder"), APC. Users are spread round-robin over
    the three geos, each with a personal site and preferredDataLocation set to their geo (NAM users
    have none: their profile is in the default geo). Tests add the odd cases themselves."""
    tenant = make_tenant(n_users, **kwargs)
    tenant.default_geo = "NAM"
    tenant.satellites = [GeoLocation("EUR", GERMAN_FOLDER, "contosoeur.sharepoint.com"),
                         GeoLocation("APC", DEFAULT_FOLDER, "contosoapc.sharepoint.com")]
    for i, user in enumerate(tenant.users):
        user.geo = ("", "EUR", "APC")[i % 3]
        user.preferredDataLocation = user.geo or None
    return tenant
