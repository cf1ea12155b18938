#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (simulated nodes), no containers.

    python3 hack/localcluster.py up|down|status|kubeconfig|restart COMPONENT [--kill]

Standard library only, so it runs before the project's virtual environment exists.
Everything binds to 127.0.0.1 on free ports, except the API server when run as root: it listens
on 10.229.255.1, an address on a link this script creates (`kaitopy-api`, a bridge with no ports),
so that pods on the local provider's real nodes reach it through the `kubernetes` Service (the API
server refuses to publish a loopback endpoint for it). Nothing is exposed on the machine's own
interfaces. Certificates, the service-account signing key, the
data directories, the logs and a state file live in the cluster directory
($KAITOPY_CLUSTER_DIR, default ~/.cache/kaitopy/cluster); the kubeconfig is <dir>/kubeconfig.

`up` is idempotent: a running, healthy cluster is reused. `down` stops every process it started,
by PID (checked against the command line, so a recycled PID is never killed), and removes the
directory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

HACK_DIR = Path(__file__).resolve().parent
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# A /16, not the apiserver's default /24: benchmarks and load waves make a Service per workspace,
# and 1,000 of them would exhaust 254 addresses ("failed to allocate a serviceIP: range is full").
SERVICE_CIDR = "10.96.0.0/16"
APISERVER_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"
# Generous on a loaded 2-core machine: the apiserver's first start installs ~60 API groups.
START_TIMEOUT_S = float(os.environ.get("KAITOPY_CLUSTER_START_TIMEOUT", "180"))


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HACK_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def cluster_dir() -> Path:
    default = Path.home() / ".cache" / "kaitopy" / "cluster"
    return Path(os.environ.get("KAITOPY_CLUSTER_DIR", str(default))).expanduser()


def log(msg: str) -> None:
    print(f"localcluster: {msg}", file=sys.stderr, flush=True)


# Bumped when the components' flags change, so `up` replaces a cluster started with old ones
# instead of reusing it (3: the API server reaches kubelets at their InternalIP with a client
# certificate, and listens on API_ADDRESS).
STATE_FORMAT = 3
API_LINK = "kaitopy-api"
API_ADDRESS = "10.229.255.1"


@dataclass
class State:
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    bin_dir: str = ""
    started_at: float = 0.0
    argv: dict[str, list[str]] = field(default_factory=dict)
    format: int = 1
    api_host: str = "127.0.0.1"

    def api_url(self) -> str:
        return f"https://{self.api_host}:{self.ports['apiserver']}"

    @classmethod
    def load(cls, path: Path) -> State | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Binaries


def find_bin_dir() -> Path:
    """Where the binaries are, in the order the README gives; builds them as the last resort."""
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
    kube_version = versions()["KUBE_VERSION"]

    def complete(d: Path) -> bool:
        return all(os.access(d / n, os.X_OK) for n in names)

    explicit = os.environ.get("KAITOPY_K8S_BIN_DIR")
    if explicit:
        if not complete(Path(explicit)):
            raise SystemExit(f"KAITOPY_K8S_BIN_DIR={explicit} lacks one of {', '.join(names)}")
        return Path(explicit)
    cache = Path.home() / ".cache" / "kaitopy" / "bin" / kube_version
    if complete(cache):
        return cache
    on_path = [shutil.which(n) for n in names]
    if all(on_path):
        return Path(on_path[0]).parent  # type: ignore[arg-type]
    log(f"binaries not found; fetching or building {kube_version} into {cache}")
    subprocess.run(["bash", str(HACK_DIR / "ensure-binaries.sh")], check=True)
    if not complete(cache):
        raise SystemExit(f"hack/ensure-binaries.sh ran but {cache} is still incomplete")
    return cache


# ---------------------------------------------------------------------------------------------
# Certificates (openssl CLI: present on every machine this runs on)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "admin.crt").exists():
        return
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=kaitopy-local-ca",
        cwd=pki,
    )
    sans = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{API_ADDRESS}",
            f"IP:{APISERVER_SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    clients = {
        "apiserver": ("/CN=kube-apiserver", f"subjectAltName={sans}"),
        "admin": ("/O=system:masters/CN=kaitopy-admin", None),
        # The API server's identity towards kubelets (logs, exec, port-forward).
        "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", None),
        "controller-manager": ("/CN=system:kube-controller-manager", None),
        "scheduler": ("/CN=system:kube-scheduler", None),
        "kwok": ("/O=system:masters/CN=kwok", None),
    }
    for name, (subject, ext) in clients.items():
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            subject,
            cwd=pki,
        )
        extra = ["-extfile", "/dev/stdin"] if ext else []
        subprocess.run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                f"{name}.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "3650",
                "-out",
                f"{name}.crt",
                *extra,
            ],
            cwd=pki,
            check=True,
            capture_output=True,
            input=(ext or "").encode(),
        )
    openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path: Path, pki: Path, user: str, port: int, host: str = "127.0.0.1") -> None:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kaitopy-local",
                "cluster": {
                    "server": f"https://{host}:{port}",
                    "certificate-authority-data": b64("ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "kaitopy-local", "context": {"cluster": "kaitopy-local", "user": user}}],
        "current-context": "kaitopy-local",
    }
    # JSON is valid YAML, so every kubeconfig reader accepts it.
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


# ---------------------------------------------------------------------------------------------
# Processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_runs(pid: int, binary: str) -> bool:
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        # A zombie has exited; only its parent has not reaped it yet.
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if cmdline:
            return os.path.basename(cmdline) == binary
        # Empty while the kernel is still inside execve (the vfork parent is released before the
        # new argument block is published): look again in a moment.
        time.sleep(0.02)
    return False


def start(name: str, argv: list[str], root: Path) -> int:
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=root,
        )
    return proc.pid


def start_recorded(state: State, name: str, argv: list[str], root: Path) -> int:
    """Start a component and remember its command line, so `restart` can start it again."""
    state.argv[name] = argv
    return start(name, argv, root)


def restart(name: str, kill: bool) -> None:
    """Stop one component (SIGKILL with kill=True, else SIGTERM) and start it again as it was:
    what a crash or an upgrade does to a real control plane."""
    root = cluster_dir()
    state = State.load(root / "state.json")
    if state is None or name not in state.argv:
        raise SystemExit(f"no running cluster with a recorded {name} in {root}")
    pid = state.pids[name]
    if pid_runs(pid, name):
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_runs(pid, name) and time.monotonic() < deadline:
            time.sleep(0.05)
    state.pids[name] = start(name, state.argv[name], root)
    state.save(root / "state.json")
    wait_for(f"{name} healthy again", lambda: healthy(state, root), state)
    log(f"restarted {name} (pid {state.pids[name]})")


def http_ok(url: str, pki: Path | None = None, timeout: float = 2.0) -> bool:
    ctx = None
    if pki is not None:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def wait_for(what: str, check: object, state: State, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        for name, pid in state.pids.items():
            if not pid_runs(pid, name):
                raise SystemExit(
                    f"{name} exited while waiting for {what}; see {cluster_dir() / 'logs' / (name + '.log')}"
                )
        time.sleep(0.3)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def healthy(state: State, root: Path) -> bool:
    if not all(pid_runs(state.pids.get(n, -1), n) for n in COMPONENTS):
        return False
    return http_ok(f"{state.api_url()}/readyz", root / "pki")


def api_host() -> str:
    """API_ADDRESS on the `kaitopy-api` link where this process may create links (root with
    iproute2), else loopback (then pods on local nodes cannot reach the API server)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return "127.0.0.1"
    if not Path(f"/sys/class/net/{API_LINK}").exists():
        subprocess.run(["ip", "link", "add", API_LINK, "type", "bridge"], check=True)
    show = ["ip", "-4", "-o", "addr", "show", "dev", API_LINK]
    addrs = subprocess.run(show, capture_output=True, text=True)
    if f" {API_ADDRESS}/" not in addrs.stdout:
        subprocess.run(["ip", "addr", "add", f"{API_ADDRESS}/32", "dev", API_LINK], check=True)
    subprocess.run(["ip", "link", "set", API_LINK, "up"], check=True)
    return API_ADDRESS


def remove_api_link() -> None:
    """The link goes with the last API server that listens on it (clusters in other
    KAITOPY_CLUSTER_DIRs share it)."""
    if not Path(f"/sys/class/net/{API_LINK}").exists():
        return
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"kube-apiserver") and f"--bind-address={API_ADDRESS}".encode() in cmd:
                return
    subprocess.run(["ip", "link", "delete", API_LINK], check=False)


def up() -> Path:
    root = cluster_dir()
    state_path = root / "state.json"
    state = State.load(state_path)
    if state is not None and state.format == STATE_FORMAT and healthy(state, root):
        log(f"reusing the running cluster in {root}")
        return root / "kubeconfig"
    if state is not None:
        log("found a stale or partial cluster; stopping it first")
        down()
    bin_dir = find_bin_dir()
    root.mkdir(parents=True, exist_ok=True)
    pki = root / "pki"
    make_pki(pki)
    t0 = time.monotonic()
    ports = {k: free_port() for k in ("etcd", "etcd_peer", "apiserver", "kwok")}
    state = State(
        ports=ports, bin_dir=str(bin_dir), started_at=time.time(), format=STATE_FORMAT, api_host=api_host()
    )
    state.save(state_path)

    def b(name: str) -> str:
        return str(bin_dir / name)

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    state.pids["etcd"] = start_recorded(
        state,
        "etcd",
        [
            b("etcd"),
            "--name=kaitopy",
            f"--data-dir={root / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=kaitopy={peer_url}",
            # A throwaway test store: durability across power loss buys nothing and fsync costs a lot.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ],
        root,
    )
    state.save(state_path)
    wait_for("etcd", lambda: http_ok(f"{etcd_url}/health"), state)

    api = ports["apiserver"]
    audit = [
        f"--audit-policy-file={HACK_DIR / 'audit-policy.yaml'}",
        f"--audit-log-path={root / 'logs' / 'audit.log'}",
        "--audit-log-maxsize=200",
        "--audit-log-maxbackup=2",
    ]
    state.pids["kube-apiserver"] = start_recorded(
        state,
        "kube-apiserver",
        [
            b("kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={state.api_host}",
            f"--advertise-address={state.api_host}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--secure-port={api}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            # Reach kubelets (logs, exec, port-forward) at their InternalIP, on a bridge of the
            # local provider: a node name would be looked up in DNS, off this machine.
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *audit,
        ],
        root,
    )
    state.save(state_path)
    write_kubeconfig(root / "kubeconfig", pki, "admin", api, state.api_host)
    write_kubeconfig(root / "controller-manager.kubeconfig", pki, "controller-manager", api, state.api_host)
    write_kubeconfig(root / "scheduler.kubeconfig", pki, "scheduler", api, state.api_host)
    write_kubeconfig(root / "kwok.kubeconfig", pki, "kwok", api, state.api_host)
    wait_for("kube-apiserver /readyz", lambda: http_ok(f"{state.api_url()}/readyz", pki), state)

    state.pids["kube-controller-manager"] = start_recorded(
        state,
        "kube-controller-manager",
        [
            b("kube-controller-manager"),
            f"--kubeconfig={root / 'controller-manager.kubeconfig'}",
            "--secure-port=0",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Benchmarks create thousands of objects: client-side throttling would dominate them.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            # kwok renews every simulated node's lease; with a thousand nodes on two cores the
            # renewals lag by tens of seconds and the default 40 s grace would mark healthy nodes
            # NotReady (and their pods unready). Pairs with kwok's --node-lease-duration-seconds.
            "--node-monitor-grace-period=360s",
            "--v=1",
        ],
        root,
    )
    state.pids["kube-scheduler"] = start_recorded(
        state,
        "kube-scheduler",
        [
            b("kube-scheduler"),
            f"--kubeconfig={root / 'scheduler.kubeconfig'}",
            "--secure-port=0",
            "--leader-elect=false",
            "--v=1",
        ],
        root,
    )
    state.pids["kwok"] = start_recorded(
        state,
        "kwok",
        [
            b("kwok"),
            f"--kubeconfig={root / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-lease-duration-seconds=120",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ],
        root,
    )
    state.save(state_path)
    wait_for("the default service account", lambda: default_sa_exists(root), state)
    for name, pid in state.pids.items():
        if not pid_runs(pid, name):
            raise SystemExit(f"{name} exited during start-up; see {root / 'logs' / (name + '.log')}")
    log(f"cluster up in {time.monotonic() - t0:.1f}s: {state.api_url()} (KUBECONFIG={root / 'kubeconfig'})")
    return root / "kubeconfig"


def default_sa_exists(root: Path) -> bool:
    state = State.load(root / "state.json")
    assert state is not None
    url = f"{state.api_url()}/api/v1/namespaces/default/serviceaccounts/default"
    return http_ok(url, root / "pki")


def down() -> None:
    root = cluster_dir()
    state = State.load(root / "state.json")
    if state is not None:
        # Reverse start order, one stage at a time: the apiserver shuts down cleanly only while
        # etcd still answers, and its clients go first so that none of them hangs on it.
        for stage in (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",)):
            stop_all({name: state.pids[name] for name in stage if name in state.pids})
    if root.exists():
        shutil.rmtree(root)
    remove_api_link()
    log("cluster down")


def stop_all(pids: dict[str, int], grace_s: float = 15.0) -> None:
    for name, pid in pids.items():
        if pid_runs(pid, name):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(pid_runs(pid, name) for name, pid in pids.items()):
        time.sleep(0.1)
    for name, pid in pids.items():
        if pid_runs(pid, name):
            log(f"{name} ignored SIGTERM for {grace_s:.0f}s; killing it")
            os.kill(pid, signal.SIGKILL)


def status() -> int:
    root = cluster_dir()
    state = State.load(root / "state.json")
    if state is None:
        print("no cluster")
        return 1
    for name in COMPONENTS:
        pid = state.pids.get(name, -1)
        print(f"{name:<24} pid {pid:<8} {'running' if pid_runs(pid, name) else 'NOT RUNNING'}")
    ready = http_ok(f"{state.api_url()}/readyz", root / "pki")
    print(f"{'apiserver /readyz':<24} {state.api_url()} {'ok' if ready else 'NOT READY'}")
    print(f"{'kubeconfig':<24} {root / 'kubeconfig'}")
    return 0 if healthy(state, root) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status", "kubeconfig", "restart"])
    parser.add_argument("component", nargs="?", choices=COMPONENTS, help="for restart")
    parser.add_argument("--kill", action="store_true", help="restart: SIGKILL instead of SIGTERM")
    args = parser.parse_args()
    if args.command == "restart":
        if not args.component:
            parser.error("restart needs a component: " + ", ".join(COMPONENTS))
        restart(args.component, args.kill)
    elif args.command == "up":
        print(up())
    elif args.command == "down":
        down()
    elif args.command == "status":
        return status()
    else:
        print(cluster_dir() / "kubeconfig")
    return 0


if __name__ == "__main__":
    sys.exit(main())
