"""``trustmesh k8s render``: deterministic output, images pinned by digest, secrets only
by reference, the optional verify-images policy, and bad input refused with a clear,
structured error and nothing written."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8srig import (
    DIGEST,
    IMAGE,
    PRODUCTION,
    attempt,
    documents,
    of_kind,
    public_key_pem,
    render,
    shop,
    tm,
    write,
)

from trustmesh import crypto


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.yaml"))}


# -- determinism ------------------------------------------------------------------------------
def test_the_same_declaration_gives_the_same_bytes(tmp_path: Path) -> None:
    """Two runs in fresh interpreters with different hash seeds (set and dict order of
    strings vary with it) write byte-identical files."""
    config = shop(tmp_path)
    trees = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}"
        ran = subprocess.run(
            [
                sys.executable,
                "-m",
                "trustmesh",
                "k8s",
                "render",
                "--config",
                str(config),
                "--out",
                str(out),
                "--image",
                IMAGE,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert ran.returncode == 0, ran.stderr
        trees.append(_tree(out))
    assert trees[0] == trees[1]
    assert set(trees[0]) == {
        "audit.yaml",
        "auth.yaml",
        "gateway.yaml",
        "identity.yaml",
        "inventory.yaml",
        "namespace.yaml",
        "networkpolicies.yaml",
        "orders.yaml",
        "payments.yaml",
        "secrets.yaml",
    }


def test_rendering_again_replaces_the_files(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    render(config, out)
    first = _tree(out)
    render(config, out)
    assert _tree(out) == first


# -- images -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "image",
    [
        "registry.example/trustmesh:1.0",
        "trustmesh:latest",
        "trustmesh",
        "registry.example/trustmesh@sha256:abc",
        "registry.example/trustmesh@sha256:" + "A" * 64,
        "registry.example/trustmesh@sha512:" + "0" * 128,
        "Registry.Example/TrustMesh@" + DIGEST.upper(),
        "@" + DIGEST,
    ],
)
def test_an_image_without_a_digest_is_refused(tmp_path: Path, image: str) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    ran = attempt(config, out, image=image)
    assert ran.code == 2
    assert repr(image) in ran.stderr
    assert "digest" in ran.stderr or "repository" in ran.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "image",
    [
        IMAGE,
        f"trustmesh@{DIGEST}",
        f"registry.example:5000/team/trustmesh@{DIGEST}",
        f"registry.example:5000/team/trustmesh:v1.2.3-rc.1@{DIGEST}",
    ],
)
def test_an_image_pinned_by_digest_is_used_as_given(tmp_path: Path, image: str) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    ran = attempt(config, out, image=image)
    assert ran.code == 0, ran.stderr
    for deployment in of_kind(documents(out), "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image
        assert container["imagePullPolicy"] == "Always"


def test_one_pod_may_run_its_own_image(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    own = f"registry.example/shop/orders:2@{DIGEST}"
    render(config, out, "--image", f"orders={own}")
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in of_kind(documents(out), "Deployment")
    }
    assert images.pop("orders") == own
    assert set(images.values()) == {IMAGE}


def test_a_pod_without_an_image_is_refused(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    only = f"orders=registry.example/shop/orders@{DIGEST}"
    ran = tm("k8s", "render", "--config", str(config), "--out", str(out), "--image", only)
    assert ran.code == 2
    assert "no image for audit, auth, gateway, identity, inventory, payments, secrets" in ran.stderr
    ran = tm("k8s", "render", "--config", str(config), "--out", str(out))
    assert ran.code == 2
    assert "no image for" in ran.stderr
    assert not out.exists()


# -- bad input --------------------------------------------------------------------------------
def test_an_unknown_component_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    ran = tm(
        "k8s",
        "render",
        "--config",
        str(config),
        "--out",
        str(out),
        "--json",
        "--image",
        IMAGE,
        "--image",
        f"billing=registry.example/b@{DIGEST}",
    )
    assert ran.code == 2
    error = json.loads(ran.stdout)["error"]
    assert error["code"] == "invalid_request"
    assert "'billing' is not a component or service of this declaration" in error["detail"]
    assert "audit, auth, gateway, identity, inventory, orders, payments, secrets" in error["detail"]
    # an external service has no pod, so no image either
    ran = attempt(config, out, "--image", f"storefront=registry.example/s@{DIGEST}")
    assert ran.code == 2
    assert "'storefront' is not a component or service" in ran.stderr
    assert not out.exists()


def test_out_is_required(tmp_path: Path) -> None:
    ran = tm("k8s", "render", "--config", str(shop(tmp_path)), "--image", IMAGE)
    assert ran.code == 2
    assert "Missing option '--out'" in ran.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "default.yaml",
        "shop.cedar",
        "shop.openapi.yaml",
        "shop.tests.yaml",
    ]


def test_a_bad_declaration_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = shop(tmp_path)
    config.write_text(
        config.read_text().replace("{from: orders, to: payments,", "{from: orders, to: paymnts,")
    )
    out = tmp_path / "out"
    ran = attempt(config, out)
    assert ran.code == 2
    assert "calls[2].to" in ran.stderr
    assert "'paymnts' is not a declared service" in ran.stderr
    ran = attempt(config, out, "--json")
    assert ran.code == 2
    error = json.loads(ran.stdout)["error"]
    assert error["code"] == "invalid_config"
    assert any("calls[2].to" in problem for problem in error["problems"])
    assert not out.exists()


def test_a_bad_namespace_or_listener_clash_is_refused(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    for namespace in ("default", "Trust_Mesh", "kube-system"):
        ran = attempt(config, out, "--namespace", namespace)
        assert ran.code == 2
        assert f"namespace {namespace!r} is not usable" in ran.stderr
    # the gateway's public port on the one the manifests give its internal listener
    config.write_text(config.read_text().replace("gateway:\n", "gateway:\n  port: 8444\n", 1))
    ran = attempt(config, out)
    assert ran.code == 2
    assert "gateway's listeners would share a port" in ran.stderr
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    out.write_text("mine")
    ran = attempt(config, out)
    assert ran.code == 2
    assert out.read_text() == "mine"


# -- secrets ----------------------------------------------------------------------------------
def test_no_secret_value_reaches_a_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passwords in the declaration's URLs, TLS keys beside it, the sealing key in the
    environment and a stack's state beside it: none of them is written; secrets appear
    only as references to Secrets the operator creates."""
    db_password, redis_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    config = write(tmp_path, PRODUCTION, db_password=db_password, redis_password=redis_password)
    tls = tmp_path / "tls"
    tls.mkdir()
    key = crypto.generate_key()
    key_pem = crypto.private_key_to_pem(key).decode("ascii")
    cert_pem = crypto.cert_pem(crypto.create_edge_ca(key, now=dt.datetime.now(dt.UTC)))
    for name in ("auth", "gateway"):
        (tls / f"{name}-key.pem").write_text(key_pem)
        (tls / f"{name}.pem").write_text(cert_pem)
    seal_key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv(crypto.SEAL_KEY_ENV, seal_key)
    out = tmp_path / "out"
    render(config, out)
    text = "".join(p.read_text() for p in sorted(out.iterdir()))
    key_body = "".join(key_pem.splitlines()[1:-1])
    for secret in (db_password, redis_password, seal_key, key_body[:40], key_body[-40:]):
        assert secret not in text
    assert cert_pem.splitlines()[1] not in text  # not even the certificate: a reference
    assert "PRIVATE KEY" not in text
    assert "postgresql" not in text
    assert "rediss" not in text
    docs = documents(out)
    assert not of_kind(docs, "Secret")
    assert not of_kind(docs, "ConfigMap")
    # where the secrets come from: references by name
    by_name = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    for name in ("identity", "auth", "audit", "secrets", "gateway"):
        container = by_name[name]["spec"]["template"]["spec"]["containers"][0]
        (seal,) = [e for e in container["env"] if e["name"] == crypto.SEAL_KEY_ENV]
        assert seal == {
            "name": crypto.SEAL_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": "trustmesh-seal-key", "key": "seal-key"}},
        }
    for name in ("billing", "ledger", "reports"):  # a service reads no secret from the pod
        container = by_name[name]["spec"]["template"]["spec"]["containers"][0]
        assert all("secretKeyRef" not in e.get("valueFrom", {}) for e in container["env"])
    volume = by_name["gateway"]["spec"]["template"]["spec"]["volumes"][0]
    assert volume["projected"]["sources"] == [
        {"configMap": {"name": "trustmesh-declaration"}},
        {
            "secret": {
                "name": "gateway-tls",
                "items": [
                    {"key": "tls.crt", "path": "tls/gateway.pem"},
                    {"key": "tls.key", "path": "tls/gateway-key.pem"},
                ],
            }
        },
    ]
    for doc in of_kind(docs, "Deployment"):
        for env in doc["spec"]["template"]["spec"]["containers"][0]["env"]:
            assert (
                "PASSWORD" not in env["name"] and "KEY" not in env["name"]
            ) or "valueFrom" in env


def test_a_tls_file_outside_the_declaration_folder_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, PRODUCTION, db_password="p", redis_password="r")
    config.write_text(config.read_text().replace("tls/gateway-key.pem", "../gateway-key.pem"))
    out = tmp_path / "out"
    ran = attempt(config, out)
    assert ran.code == 2
    assert "gateway tls_key '../gateway-key.pem' cannot be projected" in ran.stderr
    assert not out.exists()


# -- verify-images ----------------------------------------------------------------------------
def test_the_verify_images_policy(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    key_file = tmp_path / "cosign.pub"
    key_file.write_text(public_key_pem())
    own = f"registry.example:5000/shop/orders:2@{DIGEST}"
    render(config, out, "--verify-images-key", str(key_file), "--image", f"orders={own}")
    (policy,) = yaml.safe_load_all((out / "verify-images.yaml").read_text())
    assert policy["apiVersion"] == "kyverno.io/v1"
    assert policy["kind"] == "ClusterPolicy"
    assert policy["spec"]["validationFailureAction"] == "Enforce"
    (rule,) = policy["spec"]["rules"]
    assert rule["match"] == {
        "any": [{"resources": {"kinds": ["Pod"], "namespaces": ["trustmesh"]}}]
    }
    (verify,) = rule["verifyImages"]
    assert verify["imageReferences"] == [
        "registry.example/trustmesh/trustmesh*",
        "registry.example:5000/shop/orders*",
    ]
    assert verify["verifyDigest"] is True
    assert verify["required"] is True
    (attestor,) = verify["attestors"]
    assert attestor["entries"][0]["keys"]["publicKeys"].strip() == key_file.read_text().strip()
    # without the flag, no policy
    render(config, tmp_path / "plain")
    assert not (tmp_path / "plain" / "verify-images.yaml").exists()


def test_a_private_key_for_verify_images_is_refused(tmp_path: Path) -> None:
    config, out = shop(tmp_path), tmp_path / "out"
    key_file = tmp_path / "cosign.key"
    key_file.write_bytes(crypto.private_key_to_pem(crypto.generate_key()))  # made now
    ran = attempt(config, out, "--verify-images-key", str(key_file))
    assert ran.code == 2
    assert "holds a private key" in ran.stderr
    assert not out.exists()
    key_file.write_text("not a key\n")
    ran = attempt(config, out, "--verify-images-key", str(key_file))
    assert ran.code == 2
    assert "is not a PEM public key" in ran.stderr
    assert not out.exists()


def test_the_command_says_what_does_not_run_yet_and_asks_no_port_to_be_pinned(
    tmp_path: Path,
) -> None:
    """The manifests pin every port themselves (test_listeners): the command asks the
    declaration for none; it says what does not run yet, and which settings a cluster
    needs that the declaration leaves to their default."""
    config, out = shop(tmp_path), tmp_path / "out"
    ran = attempt(config, out, "--json")
    assert ran.code == 0, ran.stderr
    report = json.loads(ran.stdout)
    assert sorted(Path(p).name for p in report["written"]) == sorted(_tree(out))
    notes = report["notes"]
    assert notes[0].startswith("the pods take their SVIDs from a SPIRE agent's Workload API")
    assert not any("listens where its Service sends" in n or "port is not set" in n for n in notes)
    assert not any("127.0.0.1" in n for n in notes)
    assert any(n.startswith("auth.issuer is not set") for n in notes)
    assert any(n.startswith("audit.console.public_url is not set") for n in notes)
    # set, they are not asked for; the caveat stays
    config.write_text(
        config.read_text()
        .replace("auth:\n", "auth:\n  issuer: https://login.shop.example\n", 1)
        .replace("  console: {", "  console: {public_url: https://console.shop.example, ", 1)
    )
    ran = attempt(config, out, "--json")
    assert ran.code == 0, ran.stderr
    assert json.loads(ran.stdout)["notes"] == notes[:1]
    # and on stderr without --json
    ran = attempt(config, out)
    assert ran.stderr == f"note: {notes[0]}\n"


def test_a_declaration_in_dev_mode_is_refused(tmp_path: Path) -> None:
    """Dev mode listens on loopback only; the pods listen on their own address."""
    config, out = shop(tmp_path), tmp_path / "out"
    config.write_text(config.read_text().replace("dev: false\n", "dev: true\n", 1))
    ran = attempt(config, out)
    assert ran.code == 2
    assert "dev: true: a dev-mode declaration listens on loopback only" in ran.stderr
    assert "expected dev: false" in ran.stderr
    assert not out.exists()


def test_shared_postgres_is_refused_pods_share_no_state(tmp_path: Path) -> None:
    """`up` provisions the shared database's roles and keeps their passwords in its state
    directory; pods share none, so a declaration that relies on it is refused."""
    config, out = shop(tmp_path), tmp_path / "out"
    shared = 'shared: {postgres: "postgresql://owner@db.internal:5432/shop"}\n'
    config.write_text(config.read_text().replace("dev: false\n", "dev: false\n" + shared, 1))
    ran = attempt(config, out)
    assert ran.code == 2
    assert "shared.postgres" in ran.stderr
    assert "auth.database" in ran.stderr
    assert not out.exists()


def test_a_declaration_with_test_switches_is_refused_naming_each(tmp_path: Path) -> None:
    """A declaration that turns defences off for a test is no deployment: each switch is
    named where it is, as `config check --strict` names it; an empty section too."""
    config, out = shop(tmp_path), tmp_path / "out"
    text = config.read_text()
    config.write_text(text + "testing: {defences_off: [token-audience, call-policy]}\n")
    line = len(text.splitlines()) + 1
    ran = attempt(config, out)
    assert ran.code == 2
    assert ran.stderr.splitlines() == [
        f"error: {config}:{line}: testing.defences_off[{i}]: the test switch {name!r} "
        "turns a defence off (expected no testing: section in a declaration to ship)"
        for i, name in enumerate(("token-audience", "call-policy"))
    ]
    strict = tm("config", "check", "--strict", "--config", str(config))
    assert strict.code == 2
    for problem in ran.stderr.splitlines():
        assert problem.removeprefix("error: ") in strict.stderr
    config.write_text(text + "testing: {}\n")
    ran = attempt(config, out, "--json")
    assert ran.code == 2
    error = json.loads(ran.stdout)["error"]
    assert error["code"] == "invalid_config"
    assert error["problems"] == [
        f"{config}:{line}: testing: a test-only section (expected no testing: section)"
    ]
    assert not out.exists()


def test_a_render_removes_what_the_last_one_wrote_and_this_one_does_not(tmp_path: Path) -> None:
    """A service dropped from the declaration loses its file, so that applying the folder
    does not bring its pod back; files the renderer did not write stay."""
    config, out = shop(tmp_path), tmp_path / "out"
    render(config, out)
    (out / "kustomization.yaml").write_text("resources: []\n")
    text = config.read_text()
    config.write_text(
        text.replace(
            '  inventory: {run: "trustmesh.demo.inventory:app", runtime: {mode: enforce}}\n', ""
        )
        .replace(
            '  - {from: orders, to: inventory, allow: ["GET /items/{item}", "POST /reservations"]}\n',
            "",
        )
        .replace(
            '    - {path: /items, to: inventory, methods: [GET], auth: [anonymous], paths: ["/items/{item}"],\n       openapi: shop.openapi.yaml}\n',
            "",
        )
    )
    assert "inventory" not in config.read_text().split("services:")[1].split("auth:")[0]
    render(config, out)
    assert not (out / "inventory.yaml").exists()
    assert (out / "orders.yaml").exists()
    assert (out / "kustomization.yaml").read_text() == "resources: []\n"
