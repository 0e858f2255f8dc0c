"""infra/ read as text, for what a Bicep compiler (not installable here) or a first real `azd up`
would catch: parameter types azd can feed, regions, role ids, pinned modules and their parameters,
Flex Consumption scale settings, and the alert rules. tests/test_infra_settings.py covers the app
settings against the code."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.settings import Settings, _Reader
from tests.test_infra_settings import (
    API_BICEP,
    INFRA,
    MAIN_BICEP,
    ROOT,
    bicep_app_settings,
    block_after,
    top_level_entries,
)

ALERTS_BICEP = INFRA / "app" / "alerts.bicep"
RBAC_BICEP = INFRA / "app" / "rbac.bicep"
DEPLOY_MD = ROOT / "docs" / "deploy.md"
BICEP_FILES = sorted([MAIN_BICEP, *(INFRA / "app").glob("*.bicep")])


# A Bicep parameter and its decorators, read without a compiler

@dataclass
class Param:
    name: str
    type: str
    default: str | None
    allowed: list[str] | None = None
    min: int | None = None
    max: int | None = None
    decorators: list[str] = field(default_factory=list)


def bicep_param_decls(path: Path) -> dict[str, Param]:
    """`param` lines with the @allowed/@minValue/@maxValue/@secure decorators above them."""
    params: dict[str, Param] = {}
    pending: list[str] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("@"):
            decorator = line
            depth = line.count("(") - line.count(")")
            while depth > 0:
                i += 1
                decorator += "\n" + lines[i].strip()
                depth += lines[i].count("(") - lines[i].count(")")
            pending.append(decorator)
        elif match := re.match(r"param\s+(\w+)\s+([\w.\[\]]+)(?:\s*=\s*(.*))?$", line):
            param = Param(match.group(1), match.group(2), match.group(3), decorators=pending)
            for decorator in pending:
                if decorator.startswith("@allowed("):  # one item a line, or ['a', 'b'] on one
                    items = decorator[decorator.index("[") + 1:decorator.rindex("]")]
                    param.allowed = [m.group(1) if m.group(1) is not None else m.group(2)
                                     for m in re.finditer(r"'([^']*)'|(-?\d+)", items)]
                elif m := re.match(r"@minValue\((-?\d+)\)", decorator):
                    param.min = int(m.group(1))
                elif m := re.match(r"@maxValue\((-?\d+)\)", decorator):
                    param.max = int(m.group(1))
            params[param.name] = param
            pending = []
        elif line and not line.startswith("//"):
            pending = []
        i += 1
    return params


def test_the_param_reader(tmp_path: Path) -> None:
    sample = tmp_path / "sample.bicep"
    sample.write_text("@allowed([\n  'a'\n  'b'\n])\n@description('x (y)')\n"
                      "param p string = 'a'\n@minValue(1)\n@maxValue(9)\nparam n int = 4\n"
                      "var v = 1\nparam q bool\n@allowed(['x', 'y z'])\nparam r string\n")
    params = bicep_param_decls(sample)
    assert params["p"].allowed == ["a", "b"] and params["p"].default == "'a'"
    assert params["r"].allowed == ["x", "y z"] and params["n"].allowed is None
    assert (params["n"].min, params["n"].max, params["n"].default) == (1, 9, "4")
    assert params["q"].default is None and params["q"].allowed is None


# main.parameters.json as azd reads it

_AZD_VALUE = re.compile(r"^\$\{(\w+)(?:=(.*))?\}$")
_GO_PARSE_BOOL = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}


def azd_parameters() -> dict[str, str]:
    return {name: str(value["value"]) for name, value in
            json.loads((INFRA / "main.parameters.json").read_text())["parameters"].items()}


def azd_resolve(value: str, env: dict[str, str]) -> str | None:
    """What azd's envsubst makes of `${NAME=default}` (None: unset, azd would prompt)."""
    match = _AZD_VALUE.match(value)
    if not match:
        return value
    name, default = match.groups()
    return env.get(name, default)


def test_every_azd_parameter_has_a_type_azd_can_feed() -> None:
    """azd converts values for bool/int parameters with strconv.ParseBool/ParseInt and silently
    drops what does not parse (Azure/azure-dev bicep_provider.go armParameterFileValue)."""
    declared = bicep_param_decls(MAIN_BICEP)
    problems = []
    for name, value in azd_parameters().items():
        param = declared.get(name)
        if param is None:
            problems.append(f"{name}: not a parameter of main.bicep")
            continue
        default = azd_resolve(value, {})
        if param.type == "bool":
            problems.append(f"{name}: bool parameters lose yes/no/on/off (azd ParseBool); "
                            "use string")
        if default is None:
            continue
        if param.type == "int":
            if not re.fullmatch(r"-?\d+", default):
                problems.append(f"{name}: default {default!r} is not an int")
                continue
            number = int(default)
            too_low = param.min is not None and number < param.min
            if too_low or param.max is not None and number > param.max:
                problems.append(f"{name}: default {number} outside [{param.min}, {param.max}]")
        if param.allowed is not None and default not in param.allowed:
            problems.append(f"{name}: default {default!r} not in @allowed {param.allowed}")
        if param.type == "string" and param.default and param.default.startswith("'") \
                and default != param.default.strip("'") and name not in ("graphClientState",):
            problems.append(f"{name}: main.parameters.json default {default!r} differs from "
                            f"main.bicep's {param.default}")
    assert not problems, "\n".join(problems)


def test_azd_env_set_no_keeps_guests_out() -> None:
    """`azd env set SYNC_INCLUDE_GUESTS no` reaches the app as "no", which it reads as false."""
    params = azd_parameters()
    declared = bicep_param_decls(MAIN_BICEP)
    settings = bicep_app_settings()
    for param_name, setting in (("includeGuests", "SYNC_INCLUDE_GUESTS"),
                                ("enabledOnly", "SYNC_ENABLED_ONLY")):
        env_name = setting
        assert declared[param_name].type == "string"
        value = azd_resolve(params[param_name], {env_name: "no"})
        assert value == "no" and value in (declared[param_name].allowed or [])
        assert settings[setting] == param_name  # passed through unchanged
        env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true",
               "SHAREPOINT_MYSITE_URL": "https://contoso-my.sharepoint.com", setting: value}
        parsed = Settings.from_env(env)
        flag = parsed.include_guests if setting == "SYNC_INCLUDE_GUESTS" else parsed.enabled_only
        assert flag is False


def test_boolean_words_allowed_by_the_template_are_the_ones_the_app_accepts() -> None:
    candidates = ["true", "false", "yes", "no", "on", "off", "1", "0", "y", "n", "t", "f", "on!"]
    accepted = set()
    for word in candidates:
        reader = _Reader({"X": word})
        reader.flag("X", True)
        if not reader.problems:
            accepted.add(word)
    declared = bicep_param_decls(MAIN_BICEP)
    for name in ("includeGuests", "enabledOnly", "paused"):
        assert set(declared[name].allowed or []) == accepted, name


def test_the_deploying_principals_type_comes_from_azd() -> None:
    """azd sets AZURE_PRINCIPAL_TYPE (User, or ServicePrincipal in CI); a role assignment with the
    wrong principalType is refused (UnmatchedPrincipalType)."""
    assert azd_parameters()["principalType"] == "${AZURE_PRINCIPAL_TYPE}"
    allowed = bicep_param_decls(MAIN_BICEP)["principalType"].allowed or []
    assert set(allowed) == {"User", "ServicePrincipal"}
    azure_yaml = (ROOT / "azure.yaml").read_text()
    assert re.search(r'(?m)^requiredVersions:\n  azd: ">= 1\.17\.1"$', azure_yaml), \
        "azd sets AZURE_PRINCIPAL_TYPE from 1.17.1 on"
    rbac = RBAC_BICEP.read_text()
    assert "principalType: 'User'" not in rbac
    assert "principalType: userIdentityPrincipalType" in rbac
    module = block_after(MAIN_BICEP.read_text(), r"module\s+rbac\s")
    assert re.search(r"userIdentityPrincipalType:\s*principalType\b", module)


# Regions

def test_location_is_restricted_to_flex_consumption_regions() -> None:
    location = bicep_param_decls(MAIN_BICEP)["location"]
    regions = location.allowed or []
    assert len(regions) >= 20 and len(set(regions)) == len(regions)
    assert all(re.fullmatch(r"[a-z]+[a-z0-9]*", r) for r in regions)
    assert {"eastus", "westeurope", "swedencentral", "australiaeast"} <= set(regions)
    assert not any(r.endswith("euap") for r in regions), "canary regions are not for production"
    assert any("type: 'location'" in d for d in location.decorators), "azd location prompt lost"
    assert "az functionapp list-flexconsumption-locations" in DEPLOY_MD.read_text()


# Role ids: each is the built-in role its variable names

# Azure built-in roles (learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
# and .../built-in-roles/monitor; the same ids in Azure-Samples/functions-quickstart-python-http-azd
# infra/app/rbac.bicep and the AVM modules' builtInRoleNames).
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Storage Table Data Reader": "76199698-9eea-4c19-bc75-cec21354c6b6",
    "Storage Queue Data Reader": "19e7f393-937e-4f77-808e-94535e297925",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}


def camel(role: str) -> str:
    words = role.split()
    return words[0].lower() + "".join(words[1:])


def test_every_role_id_is_the_built_in_role_it_names() -> None:
    found = {}
    for path in BICEP_FILES:
        for match in re.finditer(r"(?m)^var\s+(\w+)\s*=\s*'([0-9a-f-]{36})'", path.read_text()):
            found[match.group(1)] = (path.name, match.group(2))
    by_variable = {camel(role): guid for role, guid in BUILT_IN_ROLES.items()}
    assert found, "no role ids found"
    for variable, (file, guid) in found.items():
        assert variable in by_variable, f"{file}: var {variable} is not a role in BUILT_IN_ROLES"
        expected = by_variable[variable]
        assert guid == expected, f"{file}: {variable} is {guid}, not {expected}"
    guids = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                       RBAC_BICEP.read_text())
    assert set(guids) <= set(BUILT_IN_ROLES.values()), "a role id outside the table"


# Modules and API versions

AVM = json.loads((Path(__file__).parent / "data" / "avm_module_params.json").read_text())["modules"]


def modules() -> list[tuple[Path, str, str, str]]:
    """(file, symbol, reference, params block) for every module."""
    found = []
    for path in BICEP_FILES:
        text = path.read_text()
        for match in re.finditer(r"(?m)^module\s+(\w+)\s+'([^']+)'\s*=", text):
            opening = r"=\s*(?:\[\s*for[^:]*:\s*)?(?:if\s*\(.*\)\s*)?\{"  # loops, conditions
            body = block_after(text[match.start():], opening)
            params = block_after("x = {" + body + "}", r"\bparams\s*:\s*\{")
            found.append((path, match.group(1), match.group(2), params))
    return found


def test_every_registry_module_is_pinned_to_a_release() -> None:
    refs = [(p.name, ref) for p, _, ref, _ in modules() if not ref.startswith("./")]
    assert refs
    for file, ref in refs:
        pinned = r"br/public:avm/(res|ptn|utl)/[a-z0-9-]+/[a-z0-9-]+:\d+\.\d+\.\d+"
        assert re.fullmatch(pinned, ref), \
            f"{file}: {ref} is not an Azure Verified Module pinned to major.minor.patch"


@pytest.mark.parametrize("symbol", [s for _, s, ref, _ in modules() if ref.startswith("br/")])
def test_registry_modules_get_parameters_they_declare(symbol: str) -> None:
    [(path, _, ref, params)] = [m for m in modules() if m[1] == symbol]
    assert ref in AVM, \
        f"{path.name}: {ref}: add its parameters to tests/data/avm_module_params.json"
    declared = AVM[ref]["params"]
    passed = set(top_level_entries(params))
    unknown = passed - set(declared)
    missing = {name for name, kind in declared.items() if kind == "required"} - passed
    assert not unknown, f"{path.name}: {ref} has no parameters {sorted(unknown)}"
    assert not missing, f"{path.name}: {ref} needs {sorted(missing)}"


def test_every_resource_type_has_a_fixed_api_version() -> None:
    for path in BICEP_FILES:
        for match in re.finditer(r"(?m)^resource\s+\w+\s+'([^']+)'", path.read_text()):
            fixed = r"Microsoft\.[A-Za-z]+/[\w/]+@\d{4}-\d{2}-\d{2}(-preview)?"
            assert re.fullmatch(fixed, match.group(1)), f"{path.name}: {match.group(1)}"


# Flex Consumption scale: within the SharePoint budget, webhook warm

def function_app_config() -> str:
    return block_after(API_BICEP.read_text(), r"\bscaleAndConcurrency\s*:\s*\{")


def test_the_instance_cap_is_the_pacing_divisor() -> None:
    """The same parameter caps the instances and tells each process how many share the budget."""
    scale = function_app_config()
    assert re.search(r"(?m)^\s*maximumInstanceCount:\s*maximumInstanceCount\s*$", scale)
    settings = bicep_app_settings()
    assert settings["PHOTO_SYNC_MAX_INSTANCES"] == "string(maximumInstanceCount)"
    assert settings["SHAREPOINT_RU_PER_MINUTE"] == "string(sharePointRuPerMinute)"
    assert settings["GRAPH_PHOTO_CONCURRENCY"] == "string(graphPhotoConcurrency)"
    assert "FUNCTIONS_WORKER_PROCESS_COUNT" not in settings, "more processes than paced"
    declared = bicep_param_decls(MAIN_BICEP)
    cap = declared["maximumInstanceCount"]
    assert (cap.min, cap.max) == (1, 1000)
    assert declared["sharePointRuPerMinute"].default == "1250"
    graph = declared["graphPhotoConcurrency"]
    assert graph.default == "4" and graph.max == 4
    params = azd_parameters()
    assert params["maximumInstanceCount"].startswith("${PHOTO_SYNC_MAX_INSTANCES=")
    assert params["sharePointRuPerMinute"] == "${SHAREPOINT_RU_PER_MINUTE=1250}"
    assert params["graphPhotoConcurrency"] == "${GRAPH_PHOTO_CONCURRENCY=4}"


def test_the_http_functions_keep_an_always_ready_instance() -> None:
    """Graph validates the webhook within 10 s; the HTTP group scales apart from the timer."""
    scale = function_app_config()
    assert re.search(r"alwaysReady:\s*httpAlwaysReady\s*>\s*0\s*\?\s*\[", scale)
    assert re.search(r"name:\s*'http'\s*\n\s*instanceCount:\s*httpAlwaysReady", scale)
    assert int(bicep_param_decls(MAIN_BICEP)["httpAlwaysReady"].default or 0) >= 1


def test_docs_arithmetic_uses_host_json_and_the_template_defaults() -> None:
    host = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    text = DEPLOY_MD.read_text()
    match = re.search(r"`batchSize` (\d+) \+ `newBatchThreshold` (\d+) = (\d+)", text)
    assert match, "docs/deploy.md: the per-instance queue concurrency line is missing"
    batch, threshold, total = map(int, match.groups())
    assert (batch, threshold) == (host["batchSize"], host["newBatchThreshold"]), \
        "host.json changed: update the arithmetic in docs/deploy.md"
    assert total == batch + threshold
    cap = int(bicep_param_decls(MAIN_BICEP)["maximumInstanceCount"].default or 0)
    assert f"`maximumInstanceCount` {cap}" in text
    for users in ("10,000", "100,000"):
        assert f"{users} users" in text


# Alerts

ALERT_SIGNALS = {
    "poison-messages": ['message == "photo-sync health"',
                        "toint(customDimensions.poison_messages) > 0",
                        'message == "sync message failed"',
                        'tostring(customDimensions.final_attempt) =~ "true"'],
    "subscription": ['message == "photo-sync health"',
                     'tostring(customDimensions.notification_url_set) =~ "true"',
                     'tostring(customDimensions.subscription_present) =~ "true"',
                     "hours_left = todouble(customDimensions.subscription_hours_left)",
                     "not(present) or hours_left < 24"],
    "reconcile-stale": ['message == "photo-sync health"',
                        "hours = todouble(customDimensions.hours_since_reconcile_completed)",
                        "hours > ${reconcileAlertAfterHours} or (hours < 0"],
    "verify-stale": ['message == "photo-sync verify"',
                     "runs = toint(customDimensions.verify_bad_runs_in_a_row)",
                     "stale = toint(customDimensions.verify_stale)",
                     "broken_link = toint(customDimensions.verify_broken_link)",
                     "runs >= 2 and stale + broken_link > 0"],
    "waiting-for-link": ['message == "photo-sync health"',
                         "oldest_hours = todouble(customDimensions.oldest_waiting_hours)",
                         "oldest_hours > 24"],
    "failed-syncs": ['message == "sync finished"',
                     'tostring(customDimensions.outcome) == "failed"',
                     "failed > ${failedAlertThreshold}"],
}


def alert_rules() -> dict[str, str]:
    text = ALERTS_BICEP.read_text()
    rules = text[text.index("var rules = ["):text.index("module alertRules")]
    fragments = {m.group(1): m.group(2) for m in re.finditer(
        r"(?m)^var\s+(\w+)\s*=\s*'((?:[^'\\]|\\.)*)'\s*$", text)}
    queries = {m.group(1): m.group(2) for m in re.finditer(
        r"name:\s*'([a-z-]+)'.*?query:\s*'((?:[^'\\]|\\.)*)'", rules, re.S)}
    # ${fragment} of a query-text variable, as Bicep interpolates it (not the ago() literals)
    return {name: re.sub(r"\$\{(latestHealth)\}", lambda m: fragments[m.group(1)], query)
            for name, query in queries.items()}


def test_the_alert_rules_read_the_contract_log_records() -> None:
    rules = alert_rules()
    assert set(rules) == set(ALERT_SIGNALS)
    for name, needles in ALERT_SIGNALS.items():
        for needle in needles:
            assert needle in rules[name], f"alert {name}: query lacks {needle}"
    for name, query in rules.items():
        for argument in re.findall(r"ago\(([^)]*)\)", query):
            # log search alerts accept ago() with timespan literals only
            assert re.fullmatch(r"\d+h|\$\{hours\}", argument), f"alert {name}: ago({argument})"
        assert "AggregatedValue" not in query and "bag_unpack" not in query


def test_the_worker_exports_the_records_the_alerts_read() -> None:
    """The Python worker drops `extra` fields unless it exports with OpenTelemetry itself."""
    assert bicep_app_settings()["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "'true'"


def test_alerts_are_deployed_with_an_optional_action_group() -> None:
    text = ALERTS_BICEP.read_text()
    assert re.search(r"module\s+actionGroup\s+'br/public:avm/res/insights/action-group:[\d.]+'"
                     r"\s*=\s*if\s*\(!empty\(alertEmail\)\)", text)
    assert "emailAddress: alertEmail" in text
    assert re.search(r"var actions = !empty\(alertEmail\) \?", text)
    assert "scopes: [\n        applicationInsights.id" in text
    assert azd_parameters()["alertEmail"] == "${ALERT_EMAIL=}"
    assert re.search(r"(?m)^module\s+alerts\s+'\./app/alerts\.bicep'", MAIN_BICEP.read_text())


def test_a_metric_alert_notices_when_nothing_runs_at_all() -> None:
    """Log search alerts are poor at missing data; Azure Monitor advises a metric alert for that."""
    text = ALERTS_BICEP.read_text()
    module = block_after(text, r"module\s+silentAlert\s+'[^']*'\s*=")
    assert "metricName: 'OnDemandFunctionExecutionCount'" in module
    assert "operator: 'LessThan'" in module and "threshold: 1" in module
    assert "timeAggregation: 'Total'" in module and "functionApp.id" in module
    assert re.search(r"var silentWindow = reconcileAlertAfterHours <= 12 \? 'PT12H' : 'P1D'", text)
    assert "actions: !empty(alertEmail) ? [actionGroup.outputs.resourceId] : []" in module


def test_no_template_slices_a_cron_string_and_the_alert_window_follows_the_interval() -> None:
    """Issue 20 §5: the reconcile-stale window is arithmetic on the numeric interval parameter."""
    for path in BICEP_FILES:
        text = path.read_text()
        assert "substring(" not in text and "NCRONTAB" not in text, path
        assert "RECONCILE_SCHEDULE:" not in text, path
    main = MAIN_BICEP.read_text()
    assert re.search(r"(?m)^param reconcileIntervalMinutes int = 15$", main)
    derived = re.search(r"(?m)^var derivedReconcileAlertHours = (.+)$", main)
    assert derived and "reconcileIntervalMinutes" in derived.group(1)
    assert "reconcileAlertAfterHours > 0 ? reconcileAlertAfterHours : derivedReconcileAlertHours" \
        in main


def test_docs_list_every_alert() -> None:
    text = DEPLOY_MD.read_text()
    section = re.search(r"(?ms)^## Alerts\s*$(.*?)(?=^## )", text)
    assert section, "docs/deploy.md has no '## Alerts' section"
    for name in [*ALERT_SIGNALS, "app-silent"]:
        assert f"`{name}`" in section.group(1), f"docs/deploy.md Alerts: {name} missing"
    assert "ALERT_EMAIL" in section.group(1)


# Hardening: what Checkov (make lint-infra) cannot see, and what it must not be talked out of

SECURITY_MD = ROOT / "docs" / "security.md"
# Site properties Flex Consumption deprecates (azure-docs articles/azure-functions/
# functions-app-settings.md, "Flex Consumption plan deprecations"): never in the template, even
# where a scanner asks for them (ftpsState: "FTPS not supported").
FLEX_DEPRECATED_SITE_PROPERTIES = (
    "alwaysOn", "ftpsState", "use32BitWorkerProcess", "functionAppScaleLimit",
    "preWarmedInstanceCount", "linuxFxVersion", "windowsFxVersion", "netFrameworkVersion",
    "javaVersion", "powerShellVersion", "containerSize", "isReserved", "IsXenon",
    "dnsConfiguration", "vnetRouteAllEnabled", "vnetContentShareEnabled", "vnetImagePullEnabled",
    "vnetBackupRestoreEnabled",
)


def function_app_resource() -> str:
    text = API_BICEP.read_text()
    start = re.search(r"(?m)^resource\s+functionApp\s+'Microsoft\.Web/sites@", text)
    assert start, "infra/app/api.bicep: no functionApp resource"
    return block_after(text[start.start():], r"=\s*\{")


def test_the_site_takes_only_tls_1_2_over_https_and_http2() -> None:
    site = function_app_resource()
    assert re.search(r"(?m)^\s*httpsOnly:\s*true\s*$", site)
    site_config = top_level_entries(block_after("x = {" + site + "}", r"\bsiteConfig\s*:\s*\{"))
    assert site_config.get("minTlsVersion") == "'1.2'"
    assert site_config.get("http20Enabled") == "true"


def test_no_property_flex_consumption_deprecates() -> None:
    code = "\n".join(re.sub(r"//.*$", "", line) for line in API_BICEP.read_text().splitlines())
    found = [name for name in FLEX_DEPRECATED_SITE_PROPERTIES
             if re.search(rf"(?m)^\s*{name}\s*:", code)]
    assert not found, f"infra/app/api.bicep sets {found}, deprecated on Flex Consumption"


def test_basic_publishing_credentials_are_off_for_ftp_and_scm() -> None:
    text = API_BICEP.read_text()
    policies = {}
    for match in re.finditer(r"(?m)^resource\s+\w+\s+'Microsoft\.Web/sites/"
                             r"basicPublishingCredentialsPolicies@[^']+'\s*=", text):
        body = block_after(text[match.start():], r"=\s*\{")
        entries = top_level_entries(body)
        assert entries.get("parent") == "functionApp"
        allow = top_level_entries(block_after("x = {" + body + "}", r"\bproperties\s*:\s*\{"))
        policies[entries["name"].strip("'")] = allow.get("allow")
    assert policies == {"ftp": "false", "scm": "false"}


def storage_params() -> dict[str, str]:
    [params] = [p for _, symbol, _, p in modules() if symbol == "storage"]
    return top_level_entries(params)


def test_the_storage_account_is_identity_only_and_stays_in_the_tenant() -> None:
    """Checkov does not open br/public modules, so the storage module's inputs are checked here."""
    params = storage_params()
    expected = {
        "allowSharedKeyAccess": "false",
        "defaultToOAuthAuthentication": "true",
        "allowBlobPublicAccess": "false",
        "allowCrossTenantReplication": "false",
        "supportsHttpsTrafficOnly": "true",
        "minimumTlsVersion": "'TLS1_2'",
    }
    for name, value in expected.items():
        assert params.get(name, "").split("//")[0].strip() == value, f"storage {name}"


def test_storage_is_locally_redundant_unless_the_operator_chooses() -> None:
    assert storage_params().get("skuName") == "storageSkuName"
    sku = bicep_param_decls(MAIN_BICEP)["storageSkuName"]
    assert sku.default == "'Standard_LRS'"
    assert set(sku.allowed or []) == {"Standard_LRS", "Standard_ZRS", "Standard_GRS",
                                      "Standard_GZRS"}
    declared = AVM["br/public:avm/res/storage/storage-account:0.33.0"]["params"]
    assert "skuName" in declared and "allowCrossTenantReplication" in declared
    assert azd_parameters()["storageSkuName"] == "${STORAGE_SKU=Standard_LRS}"
    assert "STORAGE_SKU" in DEPLOY_MD.read_text()


def checkov_skips() -> list[tuple[str, str, str]]:
    """(file, check id, reason) of every `//checkov:skip=ID:reason` in infra/."""
    found = []
    for path in BICEP_FILES:
        for match in re.finditer(r"checkov:skip=([A-Z0-9_]+)(?::(.*))?$", path.read_text(), re.M):
            found.append((path.name, match.group(1), (match.group(2) or "").strip()))
    return found


def test_every_checkov_skip_has_a_reason_and_is_documented() -> None:
    skips = checkov_skips()
    assert skips, "no checkov skips found: has the comment syntax changed?"
    documented = SECURITY_MD.read_text()
    for file, check, reason in skips:
        assert len(reason) >= 20, f"{file}: {check} is skipped without a reason"
        assert f"`{check}`" in documented, f"docs/security.md does not list the skip of {check}"


def test_make_lint_infra_runs_a_pinned_checkov_in_its_own_venv_and_ci_runs_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"(?m)^lint-infra:.*\n((?:\t.*\n)+)", makefile)
    assert recipe, "Makefile has no lint-infra target"
    assert "$(CHECKOV_VENV)/bin/checkov" in recipe.group(1)
    assert "--skip-download" in recipe.group(1) and "--soft-fail" not in recipe.group(1)
    assert re.search(r"(?m)^CHECKOV_VENV\s*:=\s*\.venv-checkov$", makefile)
    pins = [line for line in (ROOT / "requirements-checkov.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert len(pins) == 1 and re.fullmatch(r"checkov==\d+\.\d+\.\d+", pins[0])
    assert "checkov" not in (ROOT / "requirements-dev.txt").read_text()
    assert re.search(r"(?m)^make lint-infra$", (ROOT / ".ci" / "run").read_text())
    assert ".venv-checkov/" in (ROOT / ".gitignore").read_text().splitlines()
