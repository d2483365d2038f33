"""The web dashboard: an ASGI app (Starlette) that shows and manages the queues of a storage.

Needs the ``web`` extra (``pip install 'trio-jobqueue[web]'``). Serve it with
``trio-jobqueue web --storage URL`` or mount :func:`create_app` in your own trio ASGI
server (see ``docs/web.md``).
"""

from ._app import BasicAuth as BasicAuth
from ._app import TokenAuth as TokenAuth
from ._app import create_app as create_app

__all__ = ["BasicAuth", "TokenAuth", "create_app"]
