"""Serve moto (SQS, S3...) over HTTP with S3 conditional writes made atomic.

``python -m lrtkit.testing.moto_runner PORT``. moto's threaded server checks a conditional
PUT (``If-Match`` / ``If-None-Match``) and then stores the object in two steps with no lock
between them, so two writers racing with the same ``If-Match`` can both win. S3, R2 and MinIO
evaluate the condition and write atomically; fencing tests need that. This runner serialises
conditional writes only; everything else stays concurrent.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any


def main(argv: list[str]) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if environ["REQUEST_METHOD"] in ("PUT", "POST") and conditional:
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)  # type: ignore[no-any-return]

    run_simple(
        "127.0.0.1",
        int(argv[0]),
        serialised,
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
