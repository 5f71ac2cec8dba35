#!/usr/bin/env python3
"""Offline checks of the Helm chart (helm/atp) and the Dockerfile.

    scripts/chart_check.py check              every check; one line each, exit 1 on a failure
    scripts/chart_check.py write-config DIR   render the default values; write DIR/atpd.toml
                                              and DIR/pod.env (pod 0's environment, NAME=VALUE)

Run through scripts/chart-check, which installs what this needs
(helm-python-sdk: Helm's own template engine as a library, no cluster and no
helm binary; kubernetes-validate: the Kubernetes OpenAPI schemas; hadolint).

What `check` does, for each set of values below:
  1. renders the chart with Helm's engine (helm_python.Chart.render);
  2. parses every manifest (a duplicated key is an error) and validates it
     with kubernetes-validate against its newest schema, strict (unknown
     fields refused); the ServiceMonitor is a CRD kubernetes-validate has no
     schema for, so its apiVersion, kind and endpoints are checked by hand;
  3. takes atpd.toml out of the ConfigMap and runs the real
     `atpd --config FILE --check-config` with the environment the first and
     the last pod would have (fieldRefs and $(VAR) expanded as the kubelet
     does), and checks that the pod's mounts, grace period and preStop
     command agree with the configuration.
Then: values whose rendering must be refused are refused, a broken config
value makes `atpd --check-config` fail (so the check can fail), `helm lint
--strict` is clean, values.yaml's `config` has exactly atpd's keys (the
fields of `Config` in services/atpd/src/config.rs), each listed in
helm/README.md and docs/CONFIGURATION.md, and `hadolint Dockerfile` finds
nothing.

ATPD_BIN and ATPCTL_BIN name the binaries (scripts/chart-check sets them).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "atp"
RELEASE = "atp"
NAMESPACE = "atp"
# The kinds kubernetes-validate has no schema for (CRDs): checked by hand.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


class Failure(Exception):
    """A check failed; the message says what and where."""


# --- rendering ---------------------------------------------------------------


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key repeated in one mapping (Kubernetes
    and kubectl keep one of them silently; that is a chart bug)."""


def _construct_unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def load_values_file(name: str) -> dict[str, Any]:
    with open(CHART / name, encoding="utf-8") as file:
        return yaml.load(file, Loader=UniqueKeyLoader) or {}


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The chart's objects for `values` (merged over values.yaml by Helm)."""
    import helm_python

    helm_python.disable_logging()
    with helm_python.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        try:
            documents = list(yaml.load_all(text, Loader=UniqueKeyLoader))
        except yaml.YAMLError as error:
            raise Failure(f"{template}: not valid YAML: {error}") from error
        for document in documents:
            if document is not None:
                document.setdefault("metadata", {})
                objects.append({**document, "__template__": template})
    return objects


def find(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict[str, Any]]:
    found = []
    for item in objects:
        labels = item["metadata"].get("labels", {})
        if item["kind"] == kind and (component is None or labels.get("app.kubernetes.io/component") == component):
            found.append(item)
    return found


def one(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = find(objects, kind, component)
    if len(found) != 1:
        raise Failure(f"expected one {kind} of component {component}, found {len(found)}")
    return found[0]


# --- schema validation --------------------------------------------------------


def validate_schemas(objects: list[dict[str, Any]]) -> str:
    """Validates every object strictly; returns the schema version used."""
    import kubernetes_validate
    from kubernetes_validate import utils

    version = utils.latest_version()
    for item in objects:
        resource = {key: value for key, value in item.items() if key != "__template__"}
        name = f"{item['__template__']}: {item.get('kind')} {item['metadata'].get('name')}"
        if (item.get("apiVersion"), item.get("kind")) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(part) for part in error.path)
            raise Failure(f"{name}: {error.message} (at {path or '/'})") from error
        except kubernetes_validate.SchemaNotFoundError as error:
            raise Failure(f"{name}: no Kubernetes {version} schema for it") from error
    return version


def check_service_monitor(objects: list[dict[str, Any]]) -> None:
    """The CRD kubernetes-validate cannot check: its shape, and that it
    selects the headless Service, which has a `metrics` port."""
    monitors = find(objects, "ServiceMonitor")
    if len(monitors) != 1:
        raise Failure(f"serviceMonitor.enabled rendered {len(monitors)} ServiceMonitors")
    monitor = monitors[0]
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        raise Failure(f"ServiceMonitor apiVersion is {monitor.get('apiVersion')!r}")
    spec = monitor.get("spec") or {}
    endpoints = spec.get("endpoints") or []
    if [endpoint.get("port") for endpoint in endpoints] != ["metrics"]:
        raise Failure(f"ServiceMonitor endpoints are {endpoints!r}, expected port 'metrics'")
    if endpoints[0].get("path") != "/metrics":
        raise Failure("ServiceMonitor does not scrape /metrics")
    wanted = spec.get("selector", {}).get("matchLabels", {})
    services = [
        service
        for service in find(objects, "Service")
        if wanted and all(service["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
    ]
    if len(services) != 1:
        raise Failure(f"ServiceMonitor selects {len(services)} Services, expected 1")
    ports = {port.get("name") for port in services[0]["spec"]["ports"]}
    if "metrics" not in ports:
        raise Failure(f"Service {services[0]['metadata']['name']} has no 'metrics' port")


def check_dashboard(objects: list[dict[str, Any]]) -> None:
    maps = [item for item in find(objects, "ConfigMap") if "atp-overview.json" in item.get("data", {})]
    if len(maps) != 1:
        raise Failure(f"grafanaDashboard.enabled rendered {len(maps)} dashboard ConfigMaps")
    if maps[0]["metadata"].get("labels", {}).get("grafana_dashboard") != "1":
        raise Failure("the dashboard ConfigMap lacks the label grafana_dashboard: \"1\"")
    try:
        json.loads(maps[0]["data"]["atp-overview.json"])
    except json.JSONDecodeError as error:
        raise Failure(f"dashboards/atp-overview.json is not JSON: {error}") from error


# --- the pod as the kubelet would run it --------------------------------------


def pod_environment(container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The container's env list as the kubelet resolves it: fieldRefs, then
    $(VAR) references to variables defined earlier in the list."""
    fields = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE, "status.podIP": "10.0.0.10"}
    environment: dict[str, str] = {}
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            text = str(variable["value"])
            environment[name] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda match: environment.get(match.group(1), match.group(0)),
                text,
            )
        elif "fieldRef" in variable.get("valueFrom", {}):
            path = variable["valueFrom"]["fieldRef"]["fieldPath"]
            if path not in fields:
                raise Failure(f"env {name}: fieldRef {path} is not simulated by this check")
            environment[name] = fields[path]
        else:
            raise Failure(f"env {name}: only values and fieldRefs are simulated by this check")
    return environment


def atpd_container(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    named = [container for container in containers if container["name"] == "atpd"]
    if len(named) != 1:
        raise Failure("the atpd StatefulSet has no container named atpd")
    return named[0]


def config_path(container: dict[str, Any]) -> str:
    command = container.get("command", []) + container.get("args", [])
    if command[:2] != ["atpd", "--config"] or len(command) != 3:
        raise Failure(f"atpd is started as {command!r}, expected ['atpd', '--config', FILE]")
    return command[2]


def config_toml(objects: list[dict[str, Any]], statefulset: dict[str, Any], path: str) -> str:
    """The atpd.toml the pod reads at `path`: through the mount, from the ConfigMap."""
    pod = statefulset["spec"]["template"]["spec"]
    container = atpd_container(statefulset)
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            name = volume.get("configMap", {}).get("name")
            maps = [item for item in find(objects, "ConfigMap") if item["metadata"]["name"] == name]
            if len(maps) != 1 or key not in maps[0].get("data", {}):
                raise Failure(f"{path}: ConfigMap {name} with key {key} is not rendered")
            return maps[0]["data"][key]
    raise Failure(f"{path} is not on any of the atpd container's mounts")


def run_check_config(atpd: str, toml: str, environment: dict[str, str], scratch: Path) -> subprocess.CompletedProcess[str]:
    config = scratch / "atpd.toml"
    config.write_text(toml, encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment}
    return subprocess.run(
        [atpd, "--config", str(config), "--check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_pre_stop(container: dict[str, Any], atpctl: str, pod_name: str, environment: dict[str, str]) -> None:
    """The preStop command is valid atpctl syntax that drains this pod's node
    through its own listener: run against a closed port, atpctl must fail to
    connect (exit 6), not on its arguments (exit 2)."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    if command[:2] != ["/bin/sh", "-c"] or len(command) != 3:
        raise Failure(f"preStop is {command!r}, expected ['/bin/sh', '-c', SCRIPT]")
    script = command[2]
    local = "--addr http://127.0.0.1:50051 "
    if local not in script or 'node drain "$POD_NAME"' not in script:
        raise Failure(f"preStop does not drain $POD_NAME through {local.strip()}: {script}")
    if environment.get("POD_NAME") != environment.get("ATP_NODE_ID"):
        raise Failure("preStop drains $POD_NAME but the node id (ATP_NODE_ID) differs")
    script = script.replace(local, f"--addr http://127.0.0.1:{closed_port()} ")
    script = re.sub(r"--timeout-seconds \d+", "--timeout-seconds 5", script)
    path = f"{Path(atpctl).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    result = subprocess.run(
        ["/bin/sh", "-c", script],
        env={"PATH": path, **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 6:
        raise Failure(f"preStop's atpctl exited {result.returncode}, expected 6 (unreachable): {result.stderr.strip()}")


def check_pods(objects: list[dict[str, Any]], atpd: str, atpctl: str) -> str:
    """`atpd --check-config` as the first and last pod; returns their names."""
    statefulset = one(objects, "StatefulSet", "atpd")
    container = atpd_container(statefulset)
    path = config_path(container)
    toml = config_toml(objects, statefulset, path)
    replicas = statefulset["spec"]["replicas"]
    name = statefulset["metadata"]["name"]
    pods = sorted({f"{name}-0", f"{name}-{replicas - 1}"})
    cluster = "etcd_endpoints" in toml
    for pod_name in pods:
        environment = pod_environment(container, pod_name)
        environment["HOSTNAME"] = pod_name
        with tempfile.TemporaryDirectory(prefix="atp-chart-check-") as scratch:
            result = run_check_config(atpd, toml, environment, Path(scratch))
        if result.returncode != 0 or "atpd: configuration ok" not in result.stderr:
            raise Failure(
                f"atpd --check-config as {pod_name} exited {result.returncode}"
                f" without 'atpd: configuration ok':\n{result.stderr.strip()}"
            )
        if "warning" in result.stderr:
            raise Failure(f"atpd --check-config as {pod_name} warned:\n{result.stderr.strip()}")
        if cluster and "lifecycle" in container:
            check_pre_stop(container, atpctl, pod_name, environment)
    check_mounts(statefulset, container, toml)
    check_grace(statefulset, container, toml)
    return " and ".join(pods)


def toml_value(toml: str, key: str) -> Any:
    import tomllib

    return tomllib.loads(toml).get(key)


def check_mounts(statefulset: dict[str, Any], container: dict[str, Any], toml: str) -> None:
    """data_dir is on the volume claim "data", and the root filesystem is read-only."""
    data_dir = toml_value(toml, "data_dir")
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"].get("volumeClaimTemplates", [])}
    mounts = [
        mount
        for mount in container.get("volumeMounts", [])
        if data_dir and str(data_dir).startswith(mount["mountPath"].rstrip("/") + "/")
    ]
    if not mounts or mounts[0]["name"] not in claims:
        raise Failure(f"data_dir {data_dir!r} is not on a volumeClaimTemplate's mount")
    if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        raise Failure("the atpd container's root filesystem is not read-only")


def check_grace(statefulset: dict[str, Any], container: dict[str, Any], toml: str) -> None:
    """terminationGracePeriodSeconds covers the preStop drain, atpd's own drain
    on SIGTERM and its shutdown grace."""
    drain_ms = toml_value(toml, "drain_timeout_ms")
    drain_ms = 60000 if drain_ms is None else drain_ms
    grace_s = toml_value(toml, "shutdown_grace_s")
    grace_s = 10 if grace_s is None else grace_s
    needed = -(-drain_ms // 1000) + grace_s
    if "lifecycle" in container:
        timeout = re.search(r"--timeout-seconds (\d+)", container["lifecycle"]["preStop"]["exec"]["command"][2])
        needed += int(timeout.group(1)) if timeout else 30
    period = statefulset["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if period <= needed:
        raise Failure(f"terminationGracePeriodSeconds {period} does not exceed the drain and shutdown time {needed} s")


# --- the checks ---------------------------------------------------------------


CASES: list[tuple[str, Callable[[], dict[str, Any] | None], set[str]]] = [
    ("default values", lambda: None, set()),
    ("values-5node.yaml", lambda: load_values_file("values-5node.yaml"), set()),
    (
        "external etcd",
        lambda: {"etcd": {"deploy": False, "endpoints": ["http://etcd-0.etcd:2379", "etcd-1.etcd:2379"]}},
        set(),
    ),
    ("single node, no etcd", lambda: {"replicas": 1, "etcd": {"deploy": False}}, set()),
    (
        "serviceMonitor + grafanaDashboard",
        lambda: {"serviceMonitor": {"enabled": True}, "grafanaDashboard": {"enabled": True}},
        {"ServiceMonitor", "dashboard"},
    ),
]

# Values the chart must refuse to render, and a word of the message.
REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"etcd": {"deploy": False}}, "replicas > 1 needs etcd"),
    ({"config": {"node_id": "n1"}}, "config.node_id"),
    ({"config": {"listen_addr": "0.0.0.0:6000"}}, "listen_addr"),
    ({"tls": {"grpc": {"secretName": "x"}}}, "tls is reserved"),
    ({"terminationGracePeriodSeconds": 30}, "terminationGracePeriodSeconds"),
]


def check_case(values: dict[str, Any] | None, extras: set[str], atpd: str, atpctl: str) -> str:
    objects = render(values)
    version = validate_schemas(objects)
    for kind in ("StatefulSet", "ConfigMap", "Service", "PodDisruptionBudget"):
        if not find(objects, kind, "atpd"):
            raise Failure(f"no {kind} for atpd rendered")
    if "ServiceMonitor" in extras:
        check_service_monitor(objects)
    elif find(objects, "ServiceMonitor"):
        raise Failure("a ServiceMonitor is rendered although serviceMonitor.enabled is false")
    if "dashboard" in extras:
        check_dashboard(objects)
    pods = check_pods(objects, atpd, atpctl)
    crds = " (ServiceMonitor by hand: no CRD schemas)" if "ServiceMonitor" in extras else ""
    return f"{len(objects)} objects valid against Kubernetes {version} (strict){crds}; atpd --check-config ok as {pods}"


def check_broken_value(atpd: str) -> str:
    objects = render({"config": {"mailbox_capacity": 0}})
    statefulset = one(objects, "StatefulSet", "atpd")
    container = atpd_container(statefulset)
    toml = config_toml(objects, statefulset, config_path(container))
    environment = pod_environment(container, f"{statefulset['metadata']['name']}-0")
    with tempfile.TemporaryDirectory(prefix="atp-chart-check-") as scratch:
        result = run_check_config(atpd, toml, environment, Path(scratch))
    if result.returncode != 2 or "mailbox_capacity" not in result.stderr:
        raise Failure(f"config.mailbox_capacity: 0 should fail with status 2, got {result.returncode}: {result.stderr.strip()}")
    return "config.mailbox_capacity: 0 fails atpd --check-config (status 2)"


def check_refusals() -> str:
    import helm_python

    for values, word in REFUSED:
        try:
            render(values)
        except helm_python.HelmRenderError as error:
            if word not in str(error):
                raise Failure(f"{values} was refused, but not for {word!r}: {error}") from error
            continue
        raise Failure(f"{values} rendered; the chart should refuse it ({word})")
    return f"{len(REFUSED)} invalid value sets refused by the templates"


def check_lint() -> str:
    import helm_python

    helm_python.disable_logging()
    report = helm_python.lint(str(CHART), strict=True, namespace=NAMESPACE)
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + [
        {"error": error} for error in report.get("errors", [])
    ]
    if problems:
        raise Failure("; ".join(f"{m.get('path', '')}: {m['error']}" for m in problems))
    return f"helm lint --strict clean (Helm {helm_python.helm_sdk_version()} engine)"


def atpd_keys() -> list[str]:
    """The fields of atpd's Config struct, i.e. its config keys."""
    source = (ROOT / "services" / "atpd" / "src" / "config.rs").read_text(encoding="utf-8")
    body = re.search(r"^pub struct Config \{(.*?)^\}", source, re.S | re.M)
    if not body:
        raise Failure("services/atpd/src/config.rs: no `pub struct Config`")
    return re.findall(r"^\s*pub (\w+):", body.group(1), re.M)


def check_keys() -> str:
    keys = atpd_keys()
    values = load_values_file("values.yaml")["config"]
    missing = [key for key in keys if key not in values]
    unknown = [key for key in values if key not in keys]
    if missing or unknown:
        raise Failure(f"values.yaml config: missing {missing}, not atpd keys {unknown}")
    readme = (ROOT / "helm" / "README.md").read_text(encoding="utf-8")
    undocumented = [key for key in keys if f"`config.{key}`" not in readme]
    if undocumented:
        raise Failure(f"helm/README.md does not list {undocumented}")
    reference = (ROOT / "docs" / "CONFIGURATION.md").read_text(encoding="utf-8")
    undocumented = [key for key in keys if f"| `{key}` |" not in reference]
    if undocumented:
        raise Failure(f"docs/CONFIGURATION.md's table does not list {undocumented}")
    return f"values.yaml config has exactly atpd's {len(keys)} keys, each in helm/README.md and docs/CONFIGURATION.md"


def check_hadolint() -> str:
    result = subprocess.run(
        ["hadolint", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0 or result.stdout.strip():
        raise Failure(f"hadolint Dockerfile:\n{(result.stdout + result.stderr).strip()}")
    version = subprocess.run(["hadolint", "--version"], capture_output=True, text=True, check=False)
    return f"hadolint Dockerfile: no findings ({version.stdout.strip()})"


def check(atpd: str, atpctl: str) -> int:
    checks: list[tuple[str, Callable[[], str]]] = [
        ("config keys", check_keys),
        ("helm lint", check_lint),
    ]
    for name, values, extras in CASES:
        checks.append((f"render {name}", lambda values=values, extras=extras: check_case(values(), extras, atpd, atpctl)))
    checks += [
        ("refused values", check_refusals),
        ("broken value", lambda: check_broken_value(atpd)),
        ("Dockerfile", check_hadolint),
    ]
    failed = 0
    for name, run in checks:
        try:
            detail = run()
        except Failure as error:
            failed += 1
            print(f"chart-check: FAIL {name}: {error}")
            continue
        except Exception as error:  # a crash of the check itself is a failure too
            failed += 1
            print(f"chart-check: FAIL {name}: {type(error).__name__}: {error}")
            continue
        print(f"chart-check: ok   {name}: {detail}")
    return 1 if failed else 0


def write_config(directory: Path) -> int:
    """Pod 0's atpd.toml and environment for the default values."""
    objects = render(None)
    statefulset = one(objects, "StatefulSet", "atpd")
    container = atpd_container(statefulset)
    toml = config_toml(objects, statefulset, config_path(container))
    environment = pod_environment(container, f"{statefulset['metadata']['name']}-0")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "atpd.toml").write_text(toml, encoding="utf-8")
    lines = [f"{name}={value}\n" for name, value in environment.items()]
    (directory / "pod.env").write_text("".join(lines), encoding="utf-8")
    return 0


def main(arguments: list[str]) -> int:
    if arguments[:1] == ["check"] and len(arguments) == 1:
        atpd = os.path.abspath(os.environ.get("ATPD_BIN", str(ROOT / "target" / "debug" / "atpd")))
        atpctl = os.path.abspath(os.environ.get("ATPCTL_BIN", str(ROOT / "target" / "debug" / "atpctl")))
        return check(atpd, atpctl)
    if arguments[:1] == ["write-config"] and len(arguments) == 2:
        return write_config(Path(arguments[1]))
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
