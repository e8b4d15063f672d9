"""hubbub: one broadcast hub behind WebSocket, Server-Sent Events and HTTP, for Quart apps.

    from hubbub import Hubbub, Settings, Principal, Refused

    rt = Hubbub(app, url_prefix="/rt", settings=Settings(jwt_secret="..."))

See docs/embedding.md. The standalone server built from it is the repository's ``app``.
"""

from hubbub._version import __version__
from hubbub.auth import Principal
from hubbub.config import Settings
from hubbub.errors import Refused
from hubbub.extension import Hubbub
from hubbub.hub.hub import Hub
from hubbub.transports.common import AuthenticateHook, PublishHook, RequestLike

__all__ = ["AuthenticateHook", "Hub", "Hubbub", "Principal", "PublishHook", "Refused", "RequestLike",
           "Settings", "__version__"]
