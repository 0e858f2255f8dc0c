"""Start-up errors name each bad setting; defaults match the docs."""

from __future__ import annotations

import pytest

from shared.settings import Settings, SettingsError

BASE = {
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=b;",
    "SHAREPOINT_MYSITE_URL": "https://contoso-my.sharepoint.com",
}


def test_defaults() -> None:
    settings = Settings.from_env(BASE)
    assert settings.queue_name == "photo-sync"
    assert settings.poison_queue_name == "photo-sync-poison"
    assert settings.graph_base_url == "https://graph.microsoft.com/v1.0"
    assert settings.admin_url == "https://contoso-admin.sharepoint.com"
    assert settings.photos_folder == ""  # discovered from profiles or the library
    assert settings.thumbnail_naming == "object-id"
    assert settings.thumbnail_sizes == (48, 72, 200)
    assert settings.credential_kind == "managed-identity"


def test_traffic_is_decorated_with_the_tenant_and_the_package_version() -> None:
    import tomllib
    from pathlib import Path

    import shared

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert shared.__version__ == project["project"]["version"]
    assert Settings.from_env(BASE).user_agent == f"NONISV|contoso|photo-sync/{shared.__version__}"
    custom = Settings.from_env({**BASE, "PHOTO_SYNC_ORGANISATION": "Fabrikam IT"})
    assert custom.user_agent.startswith("NONISV|Fabrikam IT|photo-sync/")


@pytest.mark.parametrize(("name", "value"), [
    ("PHOTO_SYNC_ORGANISATION", "a|b"),
    ("SHAREPOINT_THUMBNAIL_NAMING", "email"),
    ("SHAREPOINT_PHOTOS_FOLDER", "Profile Pictures"),
])
def test_picture_settings_are_checked(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({**BASE, name: value})


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({
            "SHAREPOINT_MYSITE_URL": "not a url",
            "PHOTO_SYNC_QUEUE": "Bad_Queue",
            "PHOTO_SYNC_CREDENTIAL": "password",
            "THUMBNAIL_SIZES": "48,x",
            "GRAPH_BASE_URL": "http://graph.example.com/v1.0",
        })
    text = str(caught.value)
    for name in ("AzureWebJobsStorage", "SHAREPOINT_MYSITE_URL", "PHOTO_SYNC_QUEUE",
                 "PHOTO_SYNC_CREDENTIAL", "THUMBNAIL_SIZES", "GRAPH_BASE_URL"):
        assert name in text


def test_missing_queue_name_falls_back_but_blank_mysite_is_an_error() -> None:
    with pytest.raises(SettingsError, match="SHAREPOINT_MYSITE_URL is required"):
        Settings.from_env({**BASE, "SHAREPOINT_MYSITE_URL": ""})


def test_certificate_credential_needs_its_three_settings() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "PHOTO_SYNC_CREDENTIAL": "certificate"})
    for name in ("AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_CERTIFICATE_PATH"):
        assert name in str(caught.value)


def test_identity_based_storage_is_accepted() -> None:
    env = {"SHAREPOINT_MYSITE_URL": BASE["SHAREPOINT_MYSITE_URL"],
           "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net",
           "AzureWebJobsStorage__tableServiceUri": "https://st.table.core.windows.net"}
    assert Settings.from_env(env).storage.connection_string is None


def test_admin_url_must_be_set_when_it_cannot_be_derived() -> None:
    with pytest.raises(SettingsError, match="SHAREPOINT_ADMIN_URL"):
        Settings.from_env({**BASE, "SHAREPOINT_MYSITE_URL": "https://my.contoso.com"})


def test_client_state_is_never_in_the_repr() -> None:
    settings = Settings.from_env({**BASE, "GRAPH_CLIENT_STATE": "s3cret-client-state-value"})
    assert "s3cret" not in repr(settings)


def test_identity_based_storage_uses_the_configured_credential_kind() -> None:
    from azure.identity import aio

    from shared.credentials import storage_credential

    env = {"SHAREPOINT_MYSITE_URL": BASE["SHAREPOINT_MYSITE_URL"],
           "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net",
           "AzureWebJobsStorage__tableServiceUri": "https://st.table.core.windows.net"}
    for kind, expected in (("azure-cli", aio.AzureCliCredential),
                           ("managed-identity", aio.ManagedIdentityCredential)):
        storage = Settings.from_env({**env, "PHOTO_SYNC_CREDENTIAL": kind}).storage
        assert isinstance(storage_credential(storage), expected)


def test_reconcile_interval_defaults_and_off_switch() -> None:
    settings = Settings.from_env(BASE)
    assert (settings.reconcile_interval_minutes, settings.reconcile_hot_interval_minutes,
            settings.reconcile_hot_percent) == (15, 2, 5)
    assert Settings.from_env({**BASE, "RECONCILE_INTERVAL": "0"}).reconcile_interval_minutes == 0
    with pytest.raises(SettingsError) as error:
        Settings.from_env({**BASE, "RECONCILE_INTERVAL": "15m", "RECONCILE_HOT_PERCENT": "150"})
    assert "RECONCILE_INTERVAL '15m' is not a whole number of minutes" in str(error.value)
    assert "RECONCILE_HOT_PERCENT" in str(error.value)


@pytest.mark.parametrize(("schedule", "minutes"), [
    ("0 0 */6 * * *", 360), ("0 */5 * * * *", 5), ("0 30 */2 * * *", 120),
    ("0 0 */6,18 * * *", 15), ("0 0 2 * * *", 15)])
def test_the_deprecated_schedule_is_still_read_and_says_so(schedule: str, minutes: int) -> None:
    settings = Settings.from_env({**BASE, "RECONCILE_SCHEDULE": schedule})
    assert settings.reconcile_interval_minutes == minutes
    assert settings.deprecations and "RECONCILE_INTERVAL" in settings.deprecations[0]
    explicit = Settings.from_env({**BASE, "RECONCILE_SCHEDULE": schedule,
                                  "RECONCILE_INTERVAL": "7"})
    assert explicit.reconcile_interval_minutes == 7 and "ignored" in explicit.deprecations[0]


def test_sharepoint_geos_name_each_geo_and_derive_its_admin_host() -> None:
    settings = Settings.from_env({**BASE, "SHAREPOINT_GEOS":
                                  "eur=https://contosoeur-my.sharepoint.com, "
                                  "APC=https://apc.contoso.com|https://contosoapc-admin.sharepoint.com"})
    assert settings.sharepoint_geos == (
        ("EUR", "https://contosoeur-my.sharepoint.com", "https://contosoeur-admin.sharepoint.com"),
        ("APC", "https://apc.contoso.com", "https://contosoapc-admin.sharepoint.com"))
    assert Settings.from_env(BASE).sharepoint_geos == ()  # empty: discovered


@pytest.mark.parametrize(("value", "message"), [
    ("EUR", "not CODE=URL"), ("EUROPE=https://contosoeur-my.sharepoint.com", "three-letter"),
    ("EUR=http://contosoeur-my.sharepoint.com", "must use https"),
    ("EUR=https://eur.contoso.com", "cannot be derived"),
    ("EUR=https://contosoeur-my.sharepoint.com,EUR=https://x-my.sharepoint.com", "names EUR twice"),
])
def test_bad_sharepoint_geos_are_explained(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match="SHAREPOINT_GEOS") as raised:
        Settings.from_env({**BASE, "SHAREPOINT_GEOS": value})
    assert message in str(raised.value)
