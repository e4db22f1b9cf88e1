"""The reference server of the m365sim benchmark: the same uvicorn + TLS stack as
m365sim, answering every POST with 202 after reading its body, and doing nothing else.

m365sim's sendMail rate is reported as a ratio to this one, measured in the same run,
so the figure says what m365sim's own work costs on top of HTTPS itself.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def accept(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)


app = Starlette(routes=[Route("/{path:path}", accept, methods=["POST"])])

if __name__ == "__main__":
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvicorn.run(app, host="127.0.0.1", port=port, ssl_certfile=cert, ssl_keyfile=key,
                log_level="warning", access_log=False, server_header=False, timeout_keep_alive=60)
