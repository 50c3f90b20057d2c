"""A running `nimbus up` for the scripted client tests (`tests/identity/rp_flow.py`,
`tests/ai/openai_sdk.py`): the real binary (`target/debug/nimbus`, or `$NIMBUS_BIN`) on a temporary app
folder with the given manifest, `--port 0`, `NIMBUS_LOG=warn`; `url` is what its banner prints."""

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("NIMBUS_BIN", os.path.join(ROOT, "target", "debug", "nimbus"))


class Node:
    """A running `nimbus up` on a temporary app folder; stopped (and the folder removed) by `stop`."""

    def __init__(self, manifest):
        if not os.access(BIN, os.X_OK):
            raise RuntimeError(f"{BIN} is missing: run `cargo build -p nimbus` first")
        self.dir = tempfile.mkdtemp(prefix="nimbus-test-")
        with open(os.path.join(self.dir, "nimbus.toml"), "w") as f:
            f.write(manifest)
        env = {k: v for k, v in os.environ.items() if not k.startswith("NIMBUS_")}
        env["NIMBUS_LOG"] = "warn"
        self.proc = subprocess.Popen(
            [BIN, "up", self.dir, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stderr = []
        threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr), daemon=True).start()
        self.url = self._wait_for_url()
        threading.Thread(target=self._drain, args=(self.proc.stdout, []), daemon=True).start()

    @staticmethod
    def _drain(pipe, sink):
        for line in pipe:
            sink.append(line)

    def _wait_for_url(self):
        deadline = time.monotonic() + 30
        lines = []
        result = {}

        def read():
            for line in self.proc.stdout:
                lines.append(line)
                m = re.match(r"\s*listening on\s+(http://\S+)", line)
                if m:
                    result["url"] = m.group(1)
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(max(0, deadline - time.monotonic()))
        if "url" not in result:
            self.stop()
            raise RuntimeError(
                "nimbus up did not print its URL\nstdout:\n" + "".join(lines) + "\nstderr:\n" + "".join(self.stderr)
            )
        return result["url"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def admin_token(self):
        with open(os.path.join(self.dir, ".nimbus", "admin-token")) as f:
            return f.read().strip()
