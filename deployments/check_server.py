"""Checks that deployments/serve.sh runs before and after starting the server.

    python deployments/check_server.py port-free PORT
    python deployments/check_server.py healthy URL TIMEOUT_S PID

``port-free`` exits with status 1 when a program already listens on
127.0.0.1:PORT, because that program, not the new server, would then pass the
health check.
``healthy`` polls ``URL`` (the API's ``/health`` endpoint) every 0.5 s until it
returns HTTP 200, and exits with status 1 when process PID exits first or
TIMEOUT_S seconds pass.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


def port_free(port: int) -> bool:
    """Return whether a TCP socket can bind 127.0.0.1:``port`` now.

    SO_REUSEADDR is set, as the server sets it, so that connections of a server
    stopped a moment ago (TIME_WAIT) do not count, while a listener does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_healthy(url: str, timeout_s: float, pid: int) -> str | None:
    """Poll ``url`` until it returns HTTP 200.

    Returns:
        ``None`` once the server is healthy, otherwise the reason it is not
        (the process exited, or ``timeout_s`` seconds passed).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"the Prefect server (pid {pid}) exited during start-up"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    return f"{url} did not return HTTP 200 within {timeout_s:.0f} s"


def main(argv: Sequence[str]) -> int:
    """Run one check; return the process exit code."""
    if len(argv) == 2 and argv[0] == "port-free":
        if port_free(int(argv[1])):
            return 0
        sys.stderr.write(
            f"error: 127.0.0.1:{argv[1]} is in use; stop the program listening "
            "there or set TAU3MU_PREFECT_PORT to a free port\n"
        )
        return 1
    if len(argv) == 4 and argv[0] == "healthy":
        problem = wait_healthy(argv[1], float(argv[2]), int(argv[3]))
        if problem is None:
            return 0
        sys.stderr.write(f"error: {problem}\n")
        return 1
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
