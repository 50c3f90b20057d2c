"""`python3 -m nimbus`: the worker entry point (PROTOCOL.md).

Loads the app from NIMBUS_ENTRY (relative to the working directory) and serves it over HTTP/1.1 on the
Unix socket NIMBUS_WORKER_SOCKET until SIGTERM or SIGINT (exit code 0). An entry that fails to import or
defines no nimbus.App exits with code 1 and says why on stderr.
"""

import sys

from nimbus._server import main

if __name__ == "__main__":
    sys.exit(main())
