"""`kaitopy webhook` as a process: it registers itself and refuses a bad workspace until stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

from tests.integration.api.conftest import kubectl_apply, phi3
from tests.support.cluster import Cluster


def test_webhook_command_serves_until_sigterm(workspace_crd: Cluster, namespace: str) -> None:
    config_name = f"kaitopy-cmd-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kaitopy",
            "webhook",
            "--host=127.0.0.1",
            "--port=0",
            "--url=https://127.0.0.1:{port}/validate",
            f"--namespace={namespace}",
            f"--only-namespace={namespace}",
            f"--configuration-name={config_name}",
            f"--kubeconfig={workspace_crd.kubeconfig}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "kaitopy webhook listening on 127.0.0.1:" in line, proc.stderr.read() if proc.stderr else line
        bad = phi3("bad")
        bad["inference"]["preset"]["name"] = "phi-3-mini-4k-instuct"
        refused = kubectl_apply(workspace_crd, namespace, bad)
        assert refused.returncode != 0 and "did you mean phi-3-mini-4k-instruct" in refused.stderr
        assert kubectl_apply(workspace_crd, namespace, phi3("good")).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        # The configuration outlives the process (creates fail closed); remove it.
        workspace_crd.kubectl("delete", "validatingwebhookconfiguration", config_name, "--ignore-not-found")
