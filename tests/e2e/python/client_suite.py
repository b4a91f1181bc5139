#!/usr/bin/env python3
"""Drives a kinit cluster with the official Python `kubernetes` client, as a new user would.

Each check creates what it needs under a per-run namespace prefix, prints one line with its
outcome and duration, and cleans up after itself. The checks are independent: a failing one does
not stop the others. The exit status is 0 only when every check passed.

Covered: typed create/read/list of Namespace, ConfigMap, Secret, Service and Deployment, and
`status` on every created kind that has one (the client's models reject objects that lack fields
Kubernetes always returns); `utils.create_from_yaml`; dry-run; delete propagation; watch (event
order, timeout_seconds, resuming from a resourceVersion); strategic merge, JSON merge, JSON patch
and server-side apply (ConfigMap and a two-manager Deployment); the Deployment scale subresource;
409 on a stale update; 404 and 422 with `Status` bodies; paging with limit/continue; TokenRequest
tokens that authenticate as their ServiceAccount (401 for a bogus token, 403 before a
RoleBinding, success after); namespace deletion.

Usage: client_suite.py --kubeconfig ADMIN_KUBECONFIG [--image IMAGE] [--only CHECK[,CHECK]]
"""

import argparse
import copy
import json
import secrets
import sys
import time
import traceback

try:
    from kubernetes import client, config, utils, watch
    from kubernetes.client.rest import ApiException
except ImportError as error:  # the suite's only dependency
    print(
        f"FAIL setup: the Python kubernetes client is missing ({error}); "
        "install it with `pip install kubernetes`",
        flush=True,
    )
    sys.exit(2)


class CheckFailed(Exception):
    """A check saw something Kubernetes would not do."""


def expect(condition, message):
    """Fails the running check with `message` unless `condition` holds."""
    if not condition:
        raise CheckFailed(message)


def wait_for(what, deadline_seconds, probe, interval=0.25):
    """Polls `probe` until it returns a truthy value; fails after `deadline_seconds`."""
    deadline = time.monotonic() + deadline_seconds
    last = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except ApiException as error:
            last = f"{error.status} {error.reason}: {error.body}"
        if time.monotonic() > deadline:
            suffix = f" (last error: {last})" if last else ""
            raise CheckFailed(f"timed out after {deadline_seconds} s waiting for {what}{suffix}")
        time.sleep(interval)


def api_error(call, *args, **kwargs):
    """Runs `call`, which must fail with an ApiException; returns it and its JSON body."""
    try:
        result = call(*args, **kwargs)
    except ApiException as error:
        try:
            body = json.loads(error.body) if error.body else None
        except ValueError:
            body = None
        return error, body
    raise CheckFailed(f"{call.__name__} succeeded but should have failed: {result!r:.300}")


def expect_status(error, body, code, reason, what):
    """`error`/`body` are a failed request's ApiException and decoded body: a Kubernetes
    `Status` with `code` and `reason`."""
    expect(error.status == code, f"{what}: HTTP {error.status}, expected {code}; body {error.body}")
    expect(isinstance(body, dict), f"{what}: body is not JSON: {error.body!r}")
    expect(
        body.get("kind") == "Status" and body.get("apiVersion") == "v1",
        f"{what}: body is not a v1 Status: {body}",
    )
    expect(body.get("status") == "Failure", f"{what}: Status.status is not Failure: {body}")
    expect(body.get("code") == code, f"{what}: Status.code is {body.get('code')}, expected {code}")
    expect(
        body.get("reason") == reason,
        f"{what}: Status.reason is {body.get('reason')!r}, expected {reason!r}: {body}",
    )
    expect(body.get("message"), f"{what}: Status without a message: {body}")


def raw_json(response):
    """The JSON body of a `_preload_content=False` response."""
    return json.loads(response.data)


class Suite:
    """The cluster, clients and per-run names the checks share."""

    def __init__(self, kubeconfig, image):
        self.configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=self.configuration)
        self.api_client = client.ApiClient(self.configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.apps = client.AppsV1Api(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)
        self.image = image
        self.prefix = f"py-{secrets.token_hex(3)}"
        self.namespaces = []

    def namespace(self, suffix):
        """Creates namespace `<prefix>-<suffix>` (removed at the end) and returns its name."""
        name = f"{self.prefix}-{suffix}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        self.namespaces.append(name)
        return name

    def cleanup(self):
        """Deletes every namespace the run created (without waiting for them to go)."""
        for name in self.namespaces:
            try:
                self.core.delete_namespace(name)
            except ApiException as error:
                if error.status != 404:
                    print(f"cleanup: deleting namespace {name}: {error.status} {error.reason}")

    def token_client(self, token):
        """A client that authenticates with bearer `token` only (no client certificate)."""
        configuration = copy.copy(self.configuration)
        configuration.cert_file = None
        configuration.key_file = None
        configuration.api_key = {"BearerToken": f"Bearer {token}"}
        configuration.api_key_prefix = {}
        return client.ApiClient(configuration)

    def deployment(self, name, replicas=1, labels=None):
        """A one-container Deployment of the suite's image, selected by `labels` (app=NAME)."""
        labels = labels or {"app": name}
        return client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1DeploymentSpec(
                replicas=replicas,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[
                            client.V1Container(
                                name="app", image=self.image, image_pull_policy="IfNotPresent"
                            )
                        ],
                        termination_grace_period_seconds=5,
                    ),
                ),
            ),
        )

    # ---------------------------------------------------------------- checks

    def check_typed_objects(self):
        """Create, read and list the everyday kinds through the typed models."""
        ns = self.namespace("typed")
        read_ns = self.core.read_namespace(ns)
        expect(read_ns.metadata.uid, f"Namespace {ns} has no metadata.uid")
        expect(
            read_ns.status is not None and read_ns.status.phase == "Active",
            f"Namespace {ns}: status.phase is not Active: {read_ns.status}",
        )
        expect(
            read_ns.spec is not None and read_ns.spec.finalizers == ["kubernetes"],
            f"Namespace {ns}: spec.finalizers is not ['kubernetes']: {read_ns.spec}",
        )
        names = [n.metadata.name for n in self.core.list_namespace().items]
        expect(ns in names, f"list_namespace misses {ns}")

        cm = self.core.create_namespaced_config_map(
            ns,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="settings"), data={"a": "1"}),
        )
        for field in ("uid", "resource_version", "creation_timestamp"):
            expect(getattr(cm.metadata, field), f"created ConfigMap has no metadata.{field}")
        expect(cm.data == {"a": "1"}, f"ConfigMap data came back as {cm.data}")
        expect(
            self.core.read_namespaced_config_map("settings", ns).data == {"a": "1"},
            "read ConfigMap differs",
        )

        secret = self.core.create_namespaced_secret(
            ns,
            client.V1Secret(
                metadata=client.V1ObjectMeta(name="creds"), string_data={"password": "hunter2"}
            ),
        )
        expect(secret.type == "Opaque", f"Secret type defaults to Opaque, got {secret.type!r}")
        read = self.core.read_namespaced_secret("creds", ns)
        # stringData is write-only: it comes back merged into base64 data.
        expect(
            read.data == {"password": "aHVudGVyMg=="} and not read.string_data,
            f"Secret stringData not folded into data: data={read.data} stringData={read.string_data}",
        )

        svc = self.core.create_namespaced_service(
            ns,
            client.V1Service(
                metadata=client.V1ObjectMeta(name="web"),
                spec=client.V1ServiceSpec(
                    selector={"app": "web"},
                    ports=[client.V1ServicePort(port=80, target_port=8080)],
                ),
            ),
        )
        expect(svc.spec.type == "ClusterIP", f"Service type defaults to ClusterIP: {svc.spec.type}")
        expect(svc.spec.cluster_ip, f"Service has no clusterIP: {svc.spec}")
        expect(
            svc.spec.ports[0].protocol == "TCP",
            f"Service port protocol defaults to TCP: {svc.spec.ports[0]}",
        )
        expect(svc.status is not None, "Service came back without status (Kubernetes returns status: {loadBalancer: {}})")

        for kind, listed in (
            ("ConfigMap", self.core.list_namespaced_config_map(ns)),
            ("Secret", self.core.list_namespaced_secret(ns)),
            ("Service", self.core.list_namespaced_service(ns)),
        ):
            expect(listed.metadata.resource_version, f"{kind} list has no metadata.resourceVersion")
            expect(listed.items, f"{kind} list in {ns} is empty")

        # Deleting a ConfigMap answers with a Status of Success naming it.
        gone = raw_json(self.core.delete_namespaced_config_map("settings", ns, _preload_content=False))
        expect(
            gone.get("kind") == "Status" and gone.get("status") == "Success"
            and (gone.get("details") or {}).get("name") == "settings",
            f"DELETE configmap: response {gone}, expected a Status of Success with details.name",
        )

    def check_typed_deployment(self):
        """A Deployment through the typed models, as created, read and listed."""
        ns = self.namespace("deploy")
        created = raw_json(
            self.apps.create_namespaced_deployment(ns, self.deployment("web"), _preload_content=False)
        )
        expect(
            "status" in created,
            "POST /apis/apps/v1/namespaces/NS/deployments: the created Deployment has no "
            "`status` field; Kubernetes returns `status: {}` for a new Deployment "
            f"(top-level keys: {sorted(created)})",
        )
        created = self.apps.read_namespaced_deployment("web", ns)
        expect(created.metadata.generation == 1, f"Deployment generation {created.metadata.generation}, expected 1")
        spec = created.spec
        expect(
            spec.strategy is not None and spec.strategy.type == "RollingUpdate",
            f"Deployment strategy defaults to RollingUpdate: {spec.strategy}",
        )
        expect(spec.revision_history_limit == 10, f"revisionHistoryLimit defaults to 10: {spec.revision_history_limit}")
        expect(spec.progress_deadline_seconds == 600, f"progressDeadlineSeconds defaults to 600: {spec.progress_deadline_seconds}")

        everywhere = self.apps.list_deployment_for_all_namespaces(label_selector="app=web")
        expect(
            any(d.metadata.namespace == ns for d in everywhere.items),
            "list_deployment_for_all_namespaces misses the new Deployment",
        )
        listed_raw = raw_json(self.apps.list_namespaced_deployment(ns, _preload_content=False))
        expect(
            listed_raw.get("kind") == "DeploymentList" and listed_raw.get("apiVersion") == "apps/v1",
            f"list kind/apiVersion: {listed_raw.get('kind')} {listed_raw.get('apiVersion')}",
        )
        expect(
            all("status" in item for item in listed_raw.get("items", [])),
            "listed Deployments lack `status` (Kubernetes returns `status: {}` at least)",
        )
        observed = wait_for(
            "the Deployment controller to observe generation 1",
            60,
            lambda: (lambda d: d if d.status and d.status.observed_generation == 1 else None)(
                self.apps.read_namespaced_deployment_status("web", ns)
            ),
        )
        expect(observed.status.replicas == 1, f"status.replicas {observed.status.replicas}, expected 1")

    def check_create_from_yaml(self):
        """`kubernetes.utils.create_from_yaml`, the helper new users reach for first."""
        ns = self.namespace("yaml")
        documents = [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-yaml"}, "data": {"k": "v"}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "from-yaml"},
             "spec": {"selector": {"app": "from-yaml"}, "ports": [{"port": 80}]}},
            self.api_client.sanitize_for_serialization(self.deployment("from-yaml"))
            | {"apiVersion": "apps/v1", "kind": "Deployment"},
        ]
        created = utils.create_from_yaml(self.api_client, yaml_objects=documents, namespace=ns)
        kinds = sorted(type(obj).__name__ for group in created for obj in group)
        expect(kinds == ["V1ConfigMap", "V1Deployment", "V1Service"], f"create_from_yaml returned {kinds}")
        expect(
            self.apps.read_namespaced_deployment("from-yaml", ns).spec.replicas == 1,
            "the Deployment from create_from_yaml is not readable",
        )

    def check_status_on_create(self):
        """Every kind with a status struct comes back from create with `status` (at least {})."""
        ns = self.namespace("status")
        labels = {"app": "status"}
        template = self.deployment("x", labels=labels).spec.template
        batch = client.BatchV1Api(self.api_client)
        created = {
            "StatefulSet": self.apps.create_namespaced_stateful_set(
                ns,
                client.V1StatefulSet(
                    metadata=client.V1ObjectMeta(name="sts"),
                    spec=client.V1StatefulSetSpec(
                        replicas=0, service_name="sts",
                        selector=client.V1LabelSelector(match_labels=labels), template=template,
                    ),
                ),
                _preload_content=False,
            ),
            "DaemonSet": self.apps.create_namespaced_daemon_set(
                ns,
                client.V1DaemonSet(
                    metadata=client.V1ObjectMeta(name="ds"),
                    spec=client.V1DaemonSetSpec(
                        selector=client.V1LabelSelector(match_labels=labels),
                        template=client.V1PodTemplateSpec(
                            metadata=template.metadata,
                            spec=client.V1PodSpec(
                                containers=template.spec.containers,
                                node_selector={"kinit.test/no-such-node": "true"},
                            ),
                        ),
                    ),
                ),
                _preload_content=False,
            ),
            "ReplicaSet": self.apps.create_namespaced_replica_set(
                ns,
                client.V1ReplicaSet(
                    metadata=client.V1ObjectMeta(name="rs"),
                    spec=client.V1ReplicaSetSpec(
                        replicas=0, selector=client.V1LabelSelector(match_labels=labels), template=template,
                    ),
                ),
                _preload_content=False,
            ),
            "Job": batch.create_namespaced_job(
                ns,
                client.V1Job(
                    metadata=client.V1ObjectMeta(name="job"),
                    spec=client.V1JobSpec(
                        suspend=True,
                        template=client.V1PodTemplateSpec(
                            spec=client.V1PodSpec(restart_policy="Never", containers=template.spec.containers)
                        ),
                    ),
                ),
                _preload_content=False,
            ),
            "PersistentVolumeClaim": self.core.create_namespaced_persistent_volume_claim(
                ns,
                client.V1PersistentVolumeClaim(
                    metadata=client.V1ObjectMeta(name="pvc"),
                    spec=client.V1PersistentVolumeClaimSpec(
                        access_modes=["ReadWriteOnce"],
                        resources=client.V1VolumeResourceRequirements(requests={"storage": "1Mi"}),
                    ),
                ),
                _preload_content=False,
            ),
        }
        models = {
            "StatefulSet": "V1StatefulSet",
            "DaemonSet": "V1DaemonSet",
            "ReplicaSet": "V1ReplicaSet",
            "Job": "V1Job",
            "PersistentVolumeClaim": "V1PersistentVolumeClaim",
        }
        problems = []
        for kind, response in created.items():
            text = response.data.decode()
            if "status" not in json.loads(text):
                problems.append(f"{kind}: no `status` field")
                continue
            # The typed models require the status counters Kubernetes always writes
            # (ReplicaSet/StatefulSet `replicas`, the DaemonSet's four counts).
            try:
                self.api_client.deserialize(text, models[kind], "application/json")
            except Exception as error:  # noqa: BLE001 - the model rejecting the object
                detail = str(error).replace("\n", " | ")
                problems.append(f"{kind}: {models[kind]} rejects the created object: {detail}")
        expect(
            not problems,
            "objects as created (Kubernetes returns `status`, with the counters its models "
            f"require, e.g. ReplicaSet status.replicas: 0): {'; '.join(problems)}",
        )

    def check_dry_run(self):
        """dryRun=All validates and answers like a create, but stores nothing."""
        ns = self.namespace("dryrun")
        answer = self.core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="ghost"), data={"k": "v"}), dry_run="All"
        )
        expect(answer.metadata.name == "ghost" and answer.data == {"k": "v"}, f"dry-run create answered {answer}")
        error, body = api_error(self.core.read_namespaced_config_map, "ghost", ns)
        expect_status(error, body, 404, "NotFound", "read after a dry-run create (nothing may be stored)")
        error, body = api_error(
            self.core.create_namespaced_config_map,
            ns,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")),
            dry_run="All",
        )
        expect_status(error, body, 422, "Invalid", "a dry-run create of an invalid name")

    def check_delete_propagation(self):
        """Deleting a Deployment: Background removes its ReplicaSet, Orphan keeps it unowned."""
        ns = self.namespace("cascade")
        for name in ("bg", "orphan"):
            self.apps.create_namespaced_deployment(ns, self.deployment(name, replicas=0))
        def replica_set_of(name):
            return [
                rs for rs in self.apps.list_namespaced_replica_set(ns, label_selector=f"app={name}").items
            ]
        for name in ("bg", "orphan"):
            wait_for(f"the ReplicaSet of Deployment {name}", 60, lambda: replica_set_of(name))
        self.apps.delete_namespaced_deployment("bg", ns, propagation_policy="Background")
        wait_for("the ReplicaSet of Deployment bg to be garbage-collected", 60, lambda: not replica_set_of("bg"))
        self.apps.delete_namespaced_deployment(
            "orphan", ns, body=client.V1DeleteOptions(propagation_policy="Orphan")
        )
        wait_for(
            "Deployment orphan to go away",
            60,
            lambda: "orphan" not in [d.metadata.name for d in self.apps.list_namespaced_deployment(ns).items],
        )
        orphaned = wait_for(
            "the orphaned ReplicaSet to lose its ownerReference",
            30,
            lambda: [rs for rs in replica_set_of("orphan") if not rs.metadata.owner_references],
        )
        time.sleep(2)
        expect(replica_set_of("orphan"), f"the orphaned ReplicaSet {orphaned[0].metadata.name} was deleted")

    def check_watch(self):
        """Watch events in order, timeout_seconds, and resuming from a resourceVersion."""
        ns = self.namespace("watch")
        start_rv = self.core.list_namespaced_config_map(ns).metadata.resource_version
        name = "watched"
        self.core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"v": "1"})
        )
        self.core.patch_namespaced_config_map(name, ns, {"data": {"v": "2"}})
        self.core.delete_namespaced_config_map(name, ns)

        events = []
        w = watch.Watch()
        for event in w.stream(
            self.core.list_namespaced_config_map, ns, resource_version=start_rv, timeout_seconds=10
        ):
            obj = event["object"]
            expect(isinstance(obj, client.V1ConfigMap), f"watch object is a {type(obj)}")
            if obj.metadata.name == name:
                events.append((event["type"], obj.metadata.resource_version, (obj.data or {}).get("v")))
            if len(events) == 3:
                w.stop()
        types = [e[0] for e in events]
        expect(
            types == ["ADDED", "MODIFIED", "DELETED"],
            f"watch from resourceVersion {start_rv}: events {events}, expected ADDED, MODIFIED, DELETED",
        )
        expect(events[1][2] == "2", f"MODIFIED event carries data v={events[1][2]}, expected 2")
        rvs = [int(e[1]) for e in events]
        expect(rvs == sorted(rvs) and len(set(rvs)) == 3, f"event resourceVersions not increasing: {rvs}")

        # Resume after the ADDED event: only what came after it.
        resumed = []
        w = watch.Watch()
        for event in w.stream(
            self.core.list_namespaced_config_map, ns, resource_version=events[0][1], timeout_seconds=10
        ):
            if event["object"].metadata.name == name:
                resumed.append(event["type"])
            if len(resumed) == 2:
                w.stop()
        expect(
            resumed == ["MODIFIED", "DELETED"],
            f"watch resumed from resourceVersion {events[0][1]} (the ADDED one): {resumed}, "
            "expected MODIFIED, DELETED",
        )

        # timeout_seconds: a quiet watch ends by itself, on time, without events.
        began = time.monotonic()
        quiet = list(
            watch.Watch().stream(
                self.core.list_namespaced_config_map,
                ns,
                resource_version=self.core.list_namespaced_config_map(ns).metadata.resource_version,
                timeout_seconds=2,
                _request_timeout=30,
            )
        )
        took = time.monotonic() - began
        expect(quiet == [], f"a quiet watch delivered {[(e['type'], e['object'].metadata.name) for e in quiet]}")
        expect(1.5 <= took <= 8, f"watch with timeout_seconds=2 ended after {took:.1f} s")

        # A watch without a resourceVersion starts with ADDED for what exists, then live events.
        self.core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="existing"))
        )
        seen = []
        w = watch.Watch()
        for event in w.stream(self.core.list_namespaced_config_map, ns, timeout_seconds=10):
            seen.append((event["type"], event["object"].metadata.name))
            if event["object"].metadata.name == "existing" and not any(s[1] == "live" for s in seen):
                self.core.create_namespaced_config_map(
                    ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="live"))
                )
            if ("ADDED", "live") in seen:
                w.stop()
        expect(
            ("ADDED", "existing") in seen and ("ADDED", "live") in seen,
            f"watch without resourceVersion: {seen}, expected ADDED existing then ADDED live",
        )

    def check_patch(self):
        """Strategic merge, JSON merge patch, JSON patch and server-side apply."""
        ns = self.namespace("patch")
        self.apps.create_namespaced_deployment(ns, self.deployment("web"))
        # Strategic merge: containers merge by name, so the image stays.
        patched = self.apps.patch_namespaced_deployment(
            "web",
            ns,
            {"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "MODE", "value": "x"}]}]}}}},
        )
        containers = patched.spec.template.spec.containers
        expect(
            len(containers) == 1 and containers[0].image == self.image and containers[0].env
            and containers[0].env[0].name == "MODE",
            f"strategic merge patch of containers[name=app]: got {[(c.name, c.image, c.env) for c in containers]}",
        )
        expect(patched.metadata.generation == 2, f"a spec patch bumps generation to 2, got {patched.metadata.generation}")

        self.core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"), data={"a": "1", "b": "1"})
        )
        merged = self.core.patch_namespaced_config_map(
            "cfg", ns, {"data": {"a": None, "b": "2"}}, _content_type="application/merge-patch+json"
        )
        expect(merged.data == {"b": "2"}, f"JSON merge patch {{a: null, b: 2}}: data {merged.data}")
        # JSON patch: a list of operations (the client sends a list as json-patch+json).
        jp = self.core.patch_namespaced_config_map(
            "cfg",
            ns,
            [
                {"op": "replace", "path": "/data/b", "value": "3"},
                {"op": "add", "path": "/data/c", "value": "x"},
                {"op": "add", "path": "/metadata/labels", "value": {"patched": "json"}},
            ],
        )
        expect(jp.data == {"b": "3", "c": "x"}, f"JSON patch: data {jp.data}")
        expect(jp.metadata.labels == {"patched": "json"}, f"JSON patch: labels {jp.metadata.labels}")
        error, body = api_error(
            self.core.patch_namespaced_config_map,
            "cfg",
            ns,
            [{"op": "remove", "path": "/data/missing"}],
        )
        expect(
            error.status == 422,
            f"JSON patch removing a missing path: HTTP {error.status}, expected 422 ({error.body})",
        )

        # Server-side apply through the raw API client: a YAML body, fieldManager.
        manifest = (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n"
            f"  namespace: {ns}\ndata:\n  owner: first\n  shared: one\n"
        )
        applied = self._apply("applied", ns, manifest, "py-first")
        expect(applied.data == {"owner": "first", "shared": "one"}, f"server-side apply created {applied.data}")
        managers = [(m.manager, m.operation) for m in (applied.metadata.managed_fields or [])]
        expect(("py-first", "Apply") in managers, f"managedFields after apply: {managers}")
        # A second manager claiming an owned field conflicts ...
        other = (
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n"
            f"  namespace: {ns}\ndata:\n  shared: two\n"
        )
        error, body = api_error(self._apply, "applied", ns, other, "py-second")
        expect_status(error, body, 409, "Conflict", "apply of a field another manager owns")
        causes = (body.get("details") or {}).get("causes") or []
        expect(
            any("py-first" in (c.get("message") or "") for c in causes),
            f"apply conflict names no owning manager: {body}",
        )
        # ... unless forced; the typed patch method sends apply-patch+yaml (JSON is YAML).
        forced = self.core.patch_namespaced_config_map(
            "applied",
            ns,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"shared": "two"}},
            field_manager="py-second",
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        expect(forced.data == {"owner": "first", "shared": "two"}, f"forced apply: data {forced.data}")
        # Apply again by the first manager without `owner`: the field it no longer applies goes.
        again = self._apply(
            "applied",
            ns,
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n"
            f"  namespace: {ns}\ndata: {{}}\n",
            "py-first",
        )
        expect(
            again.data == {"shared": "two"},
            f"re-apply without a field removes it (and keeps the other manager's): {again.data}",
        )

    def check_apply_deployment(self):
        """Server-side apply of a Deployment by two managers: list items merge by key."""
        ns = self.namespace("ssa")

        def manifest(containers, replicas=None):
            spec = {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}},
            }
            if replicas is not None:
                spec = {"replicas": replicas}
            return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec}

        app = {"name": "app", "image": self.image, "imagePullPolicy": "IfNotPresent",
               "env": [{"name": "MODE", "value": "a"}]}
        apply = lambda body, manager: self.apps.patch_namespaced_deployment(  # noqa: E731
            "web", ns, body, field_manager=manager, _content_type="application/apply-patch+yaml"
        )
        first = apply(manifest([app]), "py-owner")
        expect(first.spec.template.spec.containers[0].env[0].value == "a", f"apply created {first.spec}")
        scaled = apply(manifest(None, replicas=2), "py-scaler")
        expect(
            scaled.spec.replicas == 2 and scaled.spec.template.spec.containers[0].image == self.image,
            f"a second manager applying only replicas: replicas {scaled.spec.replicas}, "
            f"containers {[(c.name, c.image) for c in scaled.spec.template.spec.containers]}",
        )
        side = {"name": "side", "image": self.image, "imagePullPolicy": "IfNotPresent"}
        app_without_env = {k: v for k, v in app.items() if k != "env"}
        again = apply(manifest([app_without_env, side]), "py-owner")
        containers = {c.name: c for c in again.spec.template.spec.containers}
        expect(
            set(containers) == {"app", "side"},
            f"apply with a second container: containers {sorted(containers)}",
        )
        expect(
            not containers["app"].env,
            f"a field the owner no longer applies is removed: env {containers['app'].env}",
        )
        expect(again.spec.replicas == 2, f"the other manager's replicas survive: {again.spec.replicas}")
        managers = {(m.manager, m.operation) for m in again.metadata.managed_fields or []}
        expect(
            {("py-owner", "Apply"), ("py-scaler", "Apply")} <= managers,
            f"managedFields: {sorted(managers)}",
        )

    def _apply(self, name, ns, manifest, manager, force=False):
        query = [("fieldManager", manager)] + ([("force", "true")] if force else [])
        method, url, headers, body, post = self.api_client.param_serialize(
            method="PATCH",
            resource_path="/api/v1/namespaces/{namespace}/configmaps/{name}",
            path_params={"namespace": ns, "name": name},
            query_params=query,
            header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
            body=manifest,
            auth_settings=["BearerToken"],
        )
        response = self.api_client.call_api(method, url, headers, body, post)
        response.read()
        return self.api_client.response_deserialize(
            response, {"200": "V1ConfigMap", "201": "V1ConfigMap"}
        ).data

    def check_scale(self):
        """The Deployment scale subresource: read, patch, replicas observed."""
        ns = self.namespace("scale")
        self.apps.create_namespaced_deployment(ns, self.deployment("web", replicas=1))
        scale = self.apps.read_namespaced_deployment_scale("web", ns)
        expect(scale.kind == "Scale" and scale.api_version == "autoscaling/v1", f"scale kind {scale.kind} {scale.api_version}")
        expect(scale.spec.replicas == 1, f"scale spec.replicas {scale.spec.replicas}, expected 1")
        expect(scale.metadata.resource_version, "Scale has no resourceVersion")
        patched = self.apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 3}})
        expect(patched.spec.replicas == 3, f"patched scale spec.replicas {patched.spec.replicas}")
        dep = self.apps.read_namespaced_deployment("web", ns)
        expect(dep.spec.replicas == 3, f"the Deployment did not follow its scale: spec.replicas {dep.spec.replicas}")
        observed = wait_for(
            "the scale subresource to report status.replicas 3",
            90,
            lambda: (lambda s: s if s.status.replicas == 3 else None)(
                self.apps.read_namespaced_deployment_scale("web", ns)
            ),
        )
        expect(
            observed.status.selector == "app=web",
            f"scale status.selector {observed.status.selector!r}, expected 'app=web'",
        )
        # A replace carries the Scale's resourceVersion (the Deployment's, which status updates
        # move on), so it is retried on conflict as clients do.
        for attempt in range(10):
            current = self.apps.read_namespaced_deployment_scale("web", ns)
            current.spec.replicas = 0
            try:
                replaced = self.apps.replace_namespaced_deployment_scale("web", ns, current)
                break
            except ApiException as error:
                if error.status != 409 or attempt == 9:
                    raise
        expect(replaced.spec.replicas == 0, f"replace scale to 0: {replaced.spec.replicas}")
        wait_for(
            "status.replicas 0 after scaling to zero",
            90,
            lambda: self.apps.read_namespaced_deployment_scale("web", ns).status.replicas == 0,
        )

    def check_conflict(self):
        """A replace with a stale resourceVersion is refused with 409 Conflict."""
        ns = self.namespace("conflict")
        first = self.core.create_namespaced_config_map(
            ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"), data={"n": "0"})
        )
        stale = copy.deepcopy(first)
        first.data = {"n": "1"}
        updated = self.core.replace_namespaced_config_map("cfg", ns, first)
        expect(
            updated.metadata.resource_version != stale.metadata.resource_version,
            "an update kept the resourceVersion",
        )
        stale.data = {"n": "stale"}
        error, body = api_error(self.core.replace_namespaced_config_map, "cfg", ns, stale)
        expect_status(error, body, 409, "Conflict", "replace with a stale resourceVersion")
        details = body.get("details") or {}
        expect(details.get("name") == "cfg" and details.get("kind") == "configmaps", f"409 details: {details}")
        expect(
            self.core.read_namespaced_config_map("cfg", ns).data == {"n": "1"},
            "the stale replace changed the object",
        )
        error, body = api_error(
            self.core.create_namespaced_config_map,
            ns,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg")),
        )
        expect_status(error, body, 409, "AlreadyExists", "create of an existing name")

    def check_error_statuses(self):
        """404 and 422 come with Kubernetes Status bodies."""
        ns = self.namespace("errors")
        error, body = api_error(self.core.read_namespaced_config_map, "nope", ns)
        expect_status(error, body, 404, "NotFound", "read of a missing ConfigMap")
        expect(
            body.get("details") == {"name": "nope", "kind": "configmaps"},
            f"404 details: {body.get('details')}, expected {{name: nope, kind: configmaps}}",
        )
        expect(body.get("message") == 'configmaps "nope" not found', f"404 message: {body.get('message')!r}")
        error, body = api_error(self.apps.read_namespaced_deployment, "nope", ns)
        expect_status(error, body, 404, "NotFound", "read of a missing Deployment")
        expect(
            (body.get("details") or {}).get("group") == "apps",
            f"404 of an apps/v1 kind names group apps: {body.get('details')}",
        )
        error, body = api_error(
            self.core.create_namespaced_config_map,
            f"{self.prefix}-missing",
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")),
        )
        expect_status(error, body, 404, "NotFound", "create in a missing namespace")

        error, body = api_error(
            self.core.create_namespaced_config_map,
            ns,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Bad_Name")),
        )
        expect_status(error, body, 422, "Invalid", "create of a ConfigMap named Bad_Name")
        causes = (body.get("details") or {}).get("causes") or []
        expect(
            any(c.get("field") == "metadata.name" for c in causes),
            f"422 causes name no field metadata.name: {body.get('details')}",
        )
        error, body = api_error(
            self.core.create_namespaced_service,
            ns,
            client.V1Service(
                metadata=client.V1ObjectMeta(name="badport"),
                spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=70000)]),
            ),
        )
        expect_status(error, body, 422, "Invalid", "create of a Service with port 70000")
        causes = (body.get("details") or {}).get("causes") or []
        expect(
            any(c.get("field") == "spec.ports[0].port" for c in causes),
            f"422 causes name no field spec.ports[0].port: {body.get('details')}",
        )

    def check_paging(self):
        """limit + continue over 30 ConfigMaps: every item exactly once."""
        ns = self.namespace("paging")
        wanted = {f"page-{i:02d}" for i in range(30)}
        for name in sorted(wanted):
            self.core.create_namespaced_config_map(
                ns,
                client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels={"paged": "yes"})),
            )
        seen = []
        token = None
        pages = 0
        while True:
            page = self.core.list_namespaced_config_map(
                ns, label_selector="paged=yes", limit=7, _continue=token
            )
            pages += 1
            expect(len(page.items) <= 7, f"page {pages} has {len(page.items)} items with limit=7")
            seen.extend(item.metadata.name for item in page.items)
            token = page.metadata._continue
            if not token:
                break
            expect(len(page.items) == 7, f"page {pages} is short ({len(page.items)}) but has a continue token")
            remaining = page.metadata.remaining_item_count
            expect(
                remaining is None or remaining == 30 - len(seen),
                f"remainingItemCount {remaining} after {len(seen)} of 30",
            )
            expect(pages < 20, "paging does not end")
        duplicates = sorted({n for n in seen if seen.count(n) > 1})
        expect(not duplicates, f"items listed more than once: {duplicates}")
        expect(set(seen) == wanted, f"missing from the pages: {sorted(wanted - set(seen))}")
        expect(pages == 5, f"30 items with limit=7 took {pages} pages, expected 5")
        # An invalid continue token is a 410 Expired or 400 BadRequest in Kubernetes, never a 200.
        error, body = api_error(
            self.core.list_namespaced_config_map, ns, limit=7, _continue="not-a-token"
        )
        expect(error.status in (400, 410), f"a bogus continue token: HTTP {error.status} {error.body}")

    def check_token_request(self):
        """A TokenRequest token authenticates as its ServiceAccount; RBAC applies to it."""
        ns = self.namespace("token")
        self.core.create_namespaced_service_account(
            ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
        )
        requested = self.core.create_namespaced_service_account_token(
            "reader",
            ns,
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        )
        token = requested.status.token
        expect(token and token.count(".") == 2, f"the token is not a JWT: {token!r:.40}")
        expect(requested.status.expiration_timestamp, "TokenRequest status has no expirationTimestamp")
        as_sa = self.token_client(token)
        review = client.AuthenticationV1Api(as_sa).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        username = review.status.user_info.username
        expect(
            username == f"system:serviceaccount:{ns}:reader",
            f"SelfSubjectReview with the token: username {username!r}",
        )
        groups = review.status.user_info.groups or []
        expect(
            "system:serviceaccounts" in groups and f"system:serviceaccounts:{ns}" in groups,
            f"ServiceAccount groups: {groups}",
        )
        sa_core = client.CoreV1Api(as_sa)
        error, body = api_error(sa_core.list_namespaced_config_map, ns)
        expect_status(error, body, 403, "Forbidden", "list configmaps as the ServiceAccount before a RoleBinding")
        expect(
            f"system:serviceaccount:{ns}:reader" in (body.get("message") or ""),
            f"403 message names no user: {body.get('message')}",
        )
        error, body = api_error(client.CoreV1Api(self.token_client("not-a-token")).list_namespace)
        expect_status(error, body, 401, "Unauthorized", "a request with a bogus token")

        self.rbac.create_namespaced_role(
            ns,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="cm-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["configmaps"], verbs=["get", "list"])],
            ),
        )
        self.rbac.create_namespaced_role_binding(
            ns,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="cm-reader"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="cm-reader"),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=ns)],
            ),
        )
        listed = wait_for(
            "the RoleBinding to let the ServiceAccount list configmaps",
            15,
            lambda: sa_core.list_namespaced_config_map(ns),
        )
        expect(
            any(c.metadata.name == "kube-root-ca.crt" for c in listed.items) or listed.items == [],
            f"unexpected list: {[c.metadata.name for c in listed.items]}",
        )
        error, body = api_error(
            sa_core.create_namespaced_config_map,
            ns,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope")),
        )
        expect_status(error, body, 403, "Forbidden", "create a configmap with only get/list granted")
        error, body = api_error(sa_core.list_namespaced_secret, ns)
        expect_status(error, body, 403, "Forbidden", "list secrets with only configmaps granted")

    def check_namespace_deletion(self):
        """A namespace with objects goes Terminating, then away with all its objects."""
        ns = self.namespace("doomed")
        self.core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg")))
        self.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="s"), string_data={"k": "v"}))
        self.core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="sa")))
        self.apps.create_namespaced_deployment(ns, self.deployment("web"))
        wait_for("the Deployment's pod", 60, lambda: self.core.list_namespaced_pod(ns).items)
        deleted = raw_json(self.core.delete_namespace(ns, _preload_content=False))
        expect(
            deleted.get("kind") == "Namespace" and (deleted.get("status") or {}).get("phase") == "Terminating",
            f"DELETE namespace: the response is not the Namespace in phase Terminating: "
            f"kind={deleted.get('kind')} status={deleted.get('status')}",
        )
        expect((deleted.get("metadata") or {}).get("deletionTimestamp"), "deleted Namespace has no deletionTimestamp")
        try:
            current = self.core.read_namespace(ns)
            expect(current.status.phase == "Terminating", f"read after delete: phase {current.status.phase}")
            error, body = api_error(
                self.core.create_namespaced_config_map, ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="late"))
            )
            expect_status(error, body, 403, "Forbidden", "create in a Terminating namespace")
        except ApiException as error:
            expect(error.status == 404, f"read of the deleted namespace: {error.status} {error.reason}")
        began = time.monotonic()

        def gone():
            try:
                self.core.read_namespace(ns)
                return False
            except ApiException as error:
                if error.status == 404:
                    return True
                raise

        wait_for(f"namespace {ns} to go away", 120, gone, interval=0.5)
        print(f"      namespace {ns} gone {time.monotonic() - began:.1f} s after the delete", flush=True)
        for kind, lister in (
            ("configmaps", self.core.list_namespaced_config_map),
            ("secrets", self.core.list_namespaced_secret),
            ("serviceaccounts", self.core.list_namespaced_service_account),
            ("pods", self.core.list_namespaced_pod),
            ("deployments", self.apps.list_namespaced_deployment),
            ("replicasets", self.apps.list_namespaced_replica_set),
        ):
            left = [i.metadata.name for i in lister(ns).items]
            expect(not left, f"{kind} left in the deleted namespace {ns}: {left}")


CHECKS = [
    ("typed-objects", Suite.check_typed_objects),
    ("typed-deployment", Suite.check_typed_deployment),
    ("create-from-yaml", Suite.check_create_from_yaml),
    ("status-on-create", Suite.check_status_on_create),
    ("dry-run", Suite.check_dry_run),
    ("delete-propagation", Suite.check_delete_propagation),
    ("watch", Suite.check_watch),
    ("patch", Suite.check_patch),
    ("apply-deployment", Suite.check_apply_deployment),
    ("scale-subresource", Suite.check_scale),
    ("conflict-409", Suite.check_conflict),
    ("error-statuses", Suite.check_error_statuses),
    ("paging", Suite.check_paging),
    ("token-request", Suite.check_token_request),
    ("namespace-deletion", Suite.check_namespace_deletion),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, help="admin kubeconfig of the cluster")
    parser.add_argument("--image", default="kinit.local/demoapp:latest", help="image for Deployments")
    parser.add_argument("--only", default="", help="comma-separated check names")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    unknown = only - {name for name, _ in CHECKS}
    if unknown:
        print(f"FAIL setup: unknown checks {sorted(unknown)}; known: {[n for n, _ in CHECKS]}")
        return 2
    try:
        suite = Suite(args.kubeconfig, args.image)
    except Exception as error:  # noqa: BLE001 - report any set-up failure and stop
        print(f"FAIL setup: cannot load {args.kubeconfig}: {error}", flush=True)
        return 2
    print(f"python kubernetes client suite against {suite.configuration.host}, prefix {suite.prefix}", flush=True)
    failed = []
    started = time.monotonic()
    try:
        for name, check in CHECKS:
            if only and name not in only:
                continue
            began = time.monotonic()
            try:
                check(suite)
                print(f"ok   {name} ({time.monotonic() - began:.1f} s)", flush=True)
            except CheckFailed as error:
                failed.append(name)
                print(f"FAIL {name} ({time.monotonic() - began:.1f} s): {error}", flush=True)
            except Exception as error:  # noqa: BLE001 - the client raising is a failure too
                failed.append(name)
                where = traceback.extract_tb(error.__traceback__)
                line = next((f for f in reversed(where) if f.filename == __file__), where[-1])
                detail = str(error).replace("\n", " | ")
                print(
                    f"FAIL {name} ({time.monotonic() - began:.1f} s): {type(error).__name__} at "
                    f"line {line.lineno} ({line.line}): {detail}",
                    flush=True,
                )
    finally:
        suite.cleanup()
    total = time.monotonic() - started
    if failed:
        print(f"FAILED {len(failed)} check(s): {', '.join(failed)} ({total:.1f} s)", flush=True)
        return 1
    print(f"all checks passed ({total:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
