"""The deployment (infra/*.bicep) and the docs agree with the settings the code reads.

No Bicep compiler exists on this project's machines, so the templates are read with regular
expressions: the app settings in infra/app/api.bicep, the parameters of every module, the queue and
table names. "Settings the code reads" are found by scanning shared/*.py for `env.get("X")`,
`reader.<kind>("X"`, `os.environ[...]`, `os.getenv(...)`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import function_app
from shared.settings import Settings
from simulator.functions_host import app_functions

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
API_BICEP = INFRA / "app" / "api.bicep"
MAIN_BICEP = INFRA / "main.bicep"

# Read by the code, deliberately absent from the deployed app settings.
NOT_SET_IN_AZURE = {
    "AzureWebJobsStorage": "the account refuses shared keys: identity-based AzureWebJobsStorage__* "
                           "replace the connection string",
    "AZURE_CLIENT_CERTIFICATE_PATH": "only for PHOTO_SYNC_CREDENTIAL=certificate; the app uses its "
                                     "managed identity",
    "RECONCILE_SCHEDULE": "deprecated (RECONCILE_INTERVAL replaces it); read for one release so an "
                          "existing deployment keeps its cadence until it is redeployed",
}
DEPRECATED = {"RECONCILE_SCHEDULE"}  # read for one release; RECONCILE_INTERVAL replaces it
# Set in Azure for the Functions host or the platform, not read by photo-sync's own code.
PLATFORM_PREFIXES = ("APPLICATIONINSIGHTS_", "AzureWebJobsStorage__", "PYTHON_APPLICATIONINSIGHTS_")
# Must not be app settings on the Flex Consumption plan (or contradict identity-based storage).
FORBIDDEN_ON_FLEX = ("FUNCTIONS_WORKER_RUNTIME", "FUNCTIONS_EXTENSION_VERSION",
                     "WEBSITE_RUN_FROM_PACKAGE", "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
                     "WEBSITE_CONTENTSHARE", "WEBSITE_NODE_DEFAULT_VERSION", "AzureWebJobsStorage")

_NAME = r"""["']([A-Za-z_][A-Za-z0-9_]*)["']"""
_READ_PATTERNS = [
    re.compile(r"\benv(?:iron)?\s*\.\s*get\s*\(\s*" + _NAME),             # env.get("X"), environ.get
    re.compile(r"\breader\s*\.\s*(?!problem\b)[a-z_]+\s*\(\s*" + _NAME),    # reader.text("X", ...)
    re.compile(r"\bself\s*\.\s*env\s*\.\s*get\s*\(\s*" + _NAME),
    re.compile(r"\benv(?:iron)?\s*\[\s*" + _NAME + r"\s*\]"),             # os.environ["X"], env["X"]
    re.compile(r"\bos\s*\.\s*getenv\s*\(\s*" + _NAME),
]


def strip_comments(text: str) -> str:
    return re.sub(r"(?m)^\s*#.*$", "", text)


def settings_read_by_code() -> dict[str, set[str]]:
    """Setting name -> files that read it."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "shared").glob("*.py")):
        text = strip_comments(path.read_text(encoding="utf-8"))
        for pattern in _READ_PATTERNS:
            for match in pattern.finditer(text):
                found.setdefault(match.group(1), set()).add(path.name)
    return found


# Bicep, read without a compiler

def _without_strings_and_comments(text: str) -> str:
    """Blank out '...' strings and // comments (keeping offsets), so braces can be matched."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out[i:j] = " " * (j - i)
            i = j
        elif text[i] == "'":
            j = i + 1
            while j < n and text[j] != "'":
                j += 2 if text[j] == "\\" else 1
            out[i + 1:j] = " " * (j - i - 1)
            i = j + 1
        else:
            i += 1
    return "".join(out)


def block_after(text: str, opening: str) -> str:
    """The text between the `{` that ends `opening` (a regex) and its matching `}`."""
    clean = _without_strings_and_comments(text)
    match = re.search(opening, clean)
    assert match, f"no {opening!r} in the template"
    start = clean.index("{", match.start())
    depth = 0
    for index in range(start, len(clean)):
        depth += {"{": 1, "}": -1}.get(clean[index], 0)
        if depth == 0:
            return text[start + 1:index]
    raise AssertionError(f"unbalanced braces after {opening!r}")


def top_level_entries(block: str) -> dict[str, str]:
    """`key: value` lines at the first indentation level of an object body."""
    lines = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("//")]
    if not lines:
        return {}
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    entries = {}
    for line in lines:
        if len(line) - len(line.lstrip()) != indent:
            continue
        match = re.match(r"\s*'?([A-Za-z_][A-Za-z0-9_]*)'?\s*:\s*(.*?)\s*$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def bicep_app_settings() -> dict[str, str]:
    return top_level_entries(block_after(API_BICEP.read_text(), r"\bvar\s+appSettings\s*=\s*\{"))


def bicep_params(path: Path) -> dict[str, bool]:
    """Parameter name -> has a default value."""
    params = {}
    for match in re.finditer(r"(?m)^param\s+(\w+)\s+[\w.]+(\s*=)?", path.read_text()):
        params[match.group(1)] = bool(match.group(2))
    return params


def bicep_var_string(path: Path, name: str) -> str:
    match = re.search(rf"(?m)^var\s+{name}\s*=\s*'([^']*)'", path.read_text())
    assert match, f"var {name} not found in {path.name}"
    return match.group(1)


def binding_expressions() -> dict[str, set[str]]:
    """%NAME% app-setting expressions in the bindings -> functions using them."""
    found: dict[str, set[str]] = {}
    for function in app_functions(function_app.app):
        for binding in function.get_bindings():
            text = json.dumps(binding.get_dict_repr(), default=str)
            for name in re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", text):
                found.setdefault(name, set()).add(function.get_function_name())
    return found


def binding_connections() -> set[str]:
    names = set()
    for function in app_functions(function_app.app):
        for binding in function.get_bindings():
            connection = binding.get_dict_repr().get("connection")
            if connection:
                names.add(str(connection))
    return names


def readme_settings_table() -> tuple[set[str], str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"(?ms)^## Settings\s*$(.*?)(?=^## )", text)
    assert section, "README.md has no '## Settings' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    names = {m.group(1) for line in rows if (m := re.match(r"\|\s*`([A-Za-z_][A-Za-z0-9_]*)`", line))}
    return names, "\n".join(rows)


def documented(name: str, names: set[str], table: str) -> bool:
    """A name is documented by its own row; AzureWebJobsStorage__x also by `__x` in the table."""
    if name in names:
        return True
    return "__" in name and "__" + name.split("__", 1)[1] in table


def fail_listing(problem: str, names: object) -> str:
    return f"{problem}:\n  " + "\n  ".join(sorted(names))  # type: ignore[arg-type]


# The scanner itself

def test_scanner_finds_the_settings_it_must() -> None:
    read = settings_read_by_code()
    for name in ("PHOTO_SYNC_QUEUE", "SHAREPOINT_MYSITE_URL", "GRAPH_CLIENT_STATE", "THUMBNAIL_SIZES",
                 "SYNC_INCLUDE_GUESTS", "MAX_PHOTO_PIXELS", "AzureWebJobsStorage",
                 "AzureWebJobsStorage__queueServiceUri", "AZURE_CLIENT_CERTIFICATE_PATH"):
        assert name in read, f"the scanner missed {name}; fix _READ_PATTERNS"
    assert len(read) >= 20


def test_scanner_patterns() -> None:
    sample = '''
        a = env.get("A_ONE") or None
        b = reader.text( "B_TWO", "x")
        c = reader.flag('C_THREE', True)
        reader.problem("NOT_A_READ", "message")
        d = os.environ["D_FOUR"]
        e = os.getenv("E_FIVE")
        f = reader.positive_int("F_SIX", 1)
        g = self.env.get("G_SEVEN")
        h = reader.id_list("H_EIGHT")
    '''
    found = {m.group(1) for p in _READ_PATTERNS for m in p.finditer(sample)}
    assert found == {"A_ONE", "B_TWO", "C_THREE", "D_FOUR", "E_FIVE", "F_SIX", "G_SEVEN", "H_EIGHT"}


# (a) and (b): Bicep app settings against the code

def test_every_setting_the_code_reads_is_set_by_the_bicep() -> None:
    deployed = set(bicep_app_settings())
    missing = set(settings_read_by_code()) - deployed - set(NOT_SET_IN_AZURE)
    assert not missing, fail_listing(
        "read by shared/*.py but not set in infra/app/api.bicep (add them to appSettings, or to "
        "NOT_SET_IN_AZURE with the reason)", missing)


def test_the_bicep_sets_nothing_the_code_no_longer_reads() -> None:
    read = set(settings_read_by_code())
    stale = {name for name in bicep_app_settings()
             if name not in read and not name.startswith(PLATFORM_PREFIXES)}
    assert not stale, fail_listing("set in infra/app/api.bicep but read by no code in shared/", stale)


def test_intentionally_unset_settings_are_still_read() -> None:
    unknown = set(NOT_SET_IN_AZURE) - set(settings_read_by_code())
    assert not unknown, fail_listing("NOT_SET_IN_AZURE lists names the code no longer reads", unknown)


def test_flex_consumption_settings() -> None:
    settings = bicep_app_settings()
    present = [name for name in FORBIDDEN_ON_FLEX if name in settings]
    assert not present, fail_listing("not allowed as app settings on Flex Consumption", present)
    assert settings["AzureWebJobsStorage__credential"] == "'managedidentity'"
    for suffix in ("clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri"):
        assert f"AzureWebJobsStorage__{suffix}" in settings, suffix
    assert settings["PHOTO_SYNC_CREDENTIAL"] == "'managed-identity'"
    assert settings["AZURE_CLIENT_ID"] == settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["NOTIFICATION_URL"].endswith("/api/notifications'")
    assert settings["LIFECYCLE_NOTIFICATION_URL"].endswith("/api/lifecycle'")
    api = API_BICEP.read_text()
    assert re.search(r"httpsOnly:\s*true", api)
    assert re.search(r"name:\s*'python'\s*\n\s*version:\s*'3\.11'", api)
    assert "allowSharedKeyAccess: false" in MAIN_BICEP.read_text()


def test_deployed_settings_pass_the_apps_own_validation() -> None:
    """Literal values as written; expressions replaced by what Azure would put there."""
    client_id = str(uuid.uuid4())
    expressions = {
        "identityClientId": client_id,
        "stg.properties.primaryEndpoints.blob": "https://st1.blob.core.windows.net/",
        "stg.properties.primaryEndpoints.queue": "https://st1.queue.core.windows.net/",
        "stg.properties.primaryEndpoints.table": "https://st1.table.core.windows.net/",
        "tenant().tenantId": str(uuid.uuid4()),
        "graphClientState": "0123456789abcdef0123456789abcdef",
        "sharePointMySiteUrl": "https://contoso-my.sharepoint.com",
        "sharePointAdminUrl": "",
        "includeGroups": "",
        "excludeGroups": "",
    }
    main_defaults = {m.group(1): m.group(2) for m in re.finditer(
        r"(?m)^param\s+(\w+)\s+(?:string|int)\s*=\s*'?([^'\n]*)'?\s*$", MAIN_BICEP.read_text())}
    env: dict[str, str] = {}
    for name, value in bicep_app_settings().items():
        if value in expressions:
            env[name] = expressions[value]
        elif re.fullmatch(r"'[^'$]*'", value):
            env[name] = value[1:-1]
        elif m := re.fullmatch(r"string\((\w+)\)|(includeGuests|enabledOnly|paused)", value):
            env[name] = main_defaults[m.group(1) or m.group(2)]  # int parameters; string flags
        elif "${baseUrl}" in value:
            env[name] = value.strip("'").replace("${baseUrl}", "https://func-photosync.azurewebsites.net")
        elif value.startswith("'ClientId="):
            env[name] = f"ClientId={client_id};Authorization=AAD"
        elif value in ("syncQueueName", "stateTableName"):
            env[name] = bicep_var_string(MAIN_BICEP, value)
        elif value in ("graphBaseUrl", "photosFolder", "sharepointGeos", "thumbnailNaming",
                       "organisation", "profileWrites"):
            env[name] = main_defaults[value]
        elif value == "applicationInsights.properties.ConnectionString":
            env[name] = "InstrumentationKey=00000000-0000-0000-0000-000000000000"
        else:
            raise AssertionError(f"{name}: teach this test what {value!r} becomes in Azure")
    settings = Settings.from_env(env)
    assert settings.storage.connection_string is None
    assert settings.storage.client_id == client_id == settings.client_id
    assert settings.credential_kind == "managed-identity"
    assert settings.notification_url and settings.client_state
    assert settings.lifecycle_notification_url == "https://func-photosync.azurewebsites.net/api/lifecycle"
    assert settings.admin_url == "https://contoso-admin.sharepoint.com"
    assert settings.reconcile_interval_minutes == 15 and not settings.deprecations


# (d): binding expressions and connections

def test_every_binding_expression_is_set_by_the_bicep() -> None:
    deployed = set(bicep_app_settings())
    expressions = binding_expressions()
    assert expressions, "no %NAME% expressions found in the bindings"
    missing = {f"{name} (used by {', '.join(sorted(functions))})"
               for name, functions in expressions.items() if name not in deployed}
    assert not missing, fail_listing("binding expressions the Bicep does not set", missing)


def test_every_binding_connection_is_configured() -> None:
    deployed = set(bicep_app_settings())
    for connection in binding_connections():
        assert connection in deployed or f"{connection}__queueServiceUri" in deployed, \
            f"binding connection {connection!r}: set it or its identity-based {connection}__* settings"


def test_queues_and_table_created_match_the_bindings_and_settings() -> None:
    queue = bicep_var_string(MAIN_BICEP, "syncQueueName")
    table = bicep_var_string(MAIN_BICEP, "stateTableName")
    defaults = Settings.from_env({"AzureWebJobsStorage": "UseDevelopmentStorage=true",
                                  "SHAREPOINT_MYSITE_URL": "https://contoso-my.sharepoint.com"})
    assert (queue, table) == (defaults.queue_name, defaults.state_table)
    created = set(re.findall(r"'\$\{syncQueueName\}(-[a-z-]+)'", MAIN_BICEP.read_text()))
    names = {queue} | {queue + suffix for suffix in created}
    for function in app_functions(function_app.app):
        for binding in function.get_bindings():
            name = binding.get_dict_repr().get("queueName")
            if name:
                resolved = str(name).replace("%PHOTO_SYNC_QUEUE%", queue)
                assert resolved in names, f"queue {resolved} is not created by infra/main.bicep"
                assert resolved + "-poison" in names, f"{resolved}-poison is not created"


# (c): documentation

def test_every_setting_the_code_reads_is_in_the_readme_settings_table() -> None:
    names, table = readme_settings_table()
    missing = {n for n in settings_read_by_code() if not documented(n, names, table)}
    assert not missing, fail_listing("read by shared/*.py but missing from README.md's settings table",
                                     missing)


def test_every_setting_the_code_reads_is_in_the_sample_settings() -> None:
    values = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    # Identity-based storage settings are the alternative to the sample's connection string; a
    # deprecated setting is documented (docs/settings.md) but not offered in the sample.
    missing = {n for n in settings_read_by_code()
               if n not in values and not n.startswith("AzureWebJobsStorage__")
               and n not in DEPRECATED}
    assert not missing, fail_listing("read by shared/*.py but missing from local.settings.sample.json",
                                     missing)


def test_every_setting_the_code_reads_is_in_docs_settings() -> None:
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    missing = {n for n in settings_read_by_code() if f"`{n}`" not in text}
    assert not missing, fail_listing("read by shared/*.py but missing from docs/settings.md", missing)


def test_every_deployed_setting_is_in_docs_settings() -> None:
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    missing = {n for n in bicep_app_settings() if f"`{n}`" not in text}
    assert not missing, fail_listing("set by infra/app/api.bicep but missing from docs/settings.md",
                                     missing)


# Templates wired together (what a compiler would catch first)

def test_main_parameters_file_matches_main_bicep() -> None:
    params = bicep_params(MAIN_BICEP)
    given = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    unknown = set(given) - set(params)
    assert not unknown, fail_listing("main.parameters.json sets parameters main.bicep lacks", unknown)
    required = {name for name, has_default in params.items() if not has_default}
    assert required <= set(given), fail_listing("required parameters missing from "
                                                "main.parameters.json", required - set(given))
    for name in ("sharePointMySiteUrl", "sharePointAdminUrl", "reconcileIntervalMinutes",
                 "includeGuests",
                 "environmentName", "location", "graphClientState"):
        assert name in params, name


@pytest.mark.parametrize("module_path", sorted(p.name for p in (INFRA / "app").glob("*.bicep")))
def test_local_modules_get_exactly_their_parameters(module_path: str) -> None:
    main = MAIN_BICEP.read_text()
    match = re.search(rf"module\s+(\w+)\s+'\./app/{re.escape(module_path)}'\s*=", main)
    assert match, f"infra/app/{module_path} is not used by main.bicep"
    module = block_after(main[match.start():], r"=\s*\{")
    passed = set(top_level_entries(block_after("x = {" + module + "}", r"\bparams\s*:\s*\{")))
    declared = bicep_params(INFRA / "app" / module_path)
    unknown = passed - set(declared)
    missing = {name for name, has_default in declared.items() if not has_default} - passed
    assert not unknown, fail_listing(f"main.bicep passes parameters {module_path} lacks", unknown)
    assert not missing, fail_listing(f"main.bicep does not pass required {module_path} parameters",
                                     missing)


def test_role_assignments_are_the_least_the_app_needs() -> None:
    rbac = (INFRA / "app" / "rbac.bicep").read_text()
    identity_roles = re.search(r"(?s)var identityStorageRoles = \[(.*?)\]", rbac)
    assert identity_roles, "rbac.bicep: var identityStorageRoles not found"
    assert set(identity_roles.group(1).split()) == {"storageBlobDataOwner", "storageQueueDataContributor",
                                           "storageTableDataContributor"}
    assert "b7e6dc6d-f1e8-4753-8033-0f276bb0955b" in rbac  # Storage Blob Data Owner
    assert "974c5e8b-45b9-4653-ba55-5f855dd0fb88" in rbac  # Storage Queue Data Contributor
    assert "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3" in rbac  # Storage Table Data Contributor
    assert "3913510d-42f4-4e42-8a64-420c390055eb" in rbac  # Monitoring Metrics Publisher
    assert "Contributor'" not in rbac and "Owner'" not in rbac


# Scripts

SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_grant_permissions_prints_usage_without_touching_azure() -> None:
    script = ROOT / "scripts" / "grant-permissions.sh"
    text = script.read_text()
    assert "set -euo pipefail" in text
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                            check=False, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert result.returncode == 0, result.stderr
    for role in ("User.Read.All", "ProfilePhoto.Read.All", "Sites.Selected", "Sites.FullControl.All"):
        assert role in result.stdout
    bad = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True,
                         check=False, env={"PATH": "/usr/bin:/bin"}, timeout=30)
    assert bad.returncode == 2 and "unknown option" in bad.stderr
