"""The Trio SocketCluster client (protocols 1 and 2), on trio-websocket. See docs/client.md.

::

    async with connect("ws://127.0.0.1:8000/socketcluster/") as client:
        await client.invoke("login", {"username": "ada", "password": "demo"})
        channel = await client.subscribe("news")
        async for data in channel:
            ...
"""

from .backoff import ReconnectPolicy as ReconnectPolicy
from .backoff import reconnect_delay_s as reconnect_delay_s
from .channel import Channel as Channel
from .channel import ChannelState as ChannelState
from .channel import KickedOut as KickedOut
from .client import AuthStatus as AuthStatus
from .client import Client as Client
from .client import ClientState as ClientState
from .client import CloseInfo as CloseInfo
from .client import StreamFactory as StreamFactory
from .client import connect as connect
from .client import connect_stream as connect_stream
from .inbox import Inbox as Inbox
from .inbox import Reader as Reader
from .tokens import FileTokenStore as FileTokenStore
from .tokens import MemoryTokenStore as MemoryTokenStore
from .tokens import TokenStore as TokenStore

__all__ = [
    "AuthStatus",
    "Channel",
    "ChannelState",
    "Client",
    "ClientState",
    "CloseInfo",
    "FileTokenStore",
    "Inbox",
    "KickedOut",
    "MemoryTokenStore",
    "Reader",
    "ReconnectPolicy",
    "StreamFactory",
    "TokenStore",
    "connect",
    "connect_stream",
    "reconnect_delay_s",
]
