"""trio-socketcluster: a SocketCluster server (protocols 1 and 2) for Trio.

The public API is what this module exports, and nothing else.
"""

from .auth import AuthEngine as AuthEngine
from .auth import Keyring as Keyring
from .brokers import Broker as Broker
from .brokers import HistoryBroker as HistoryBroker
from .brokers import LocalBroker as LocalBroker
from .brokers.local_revocation import LocalRevocationStore as LocalRevocationStore
from .config import ServerConfig as ServerConfig
from .errors import AuthError as AuthError
from .errors import AuthTokenError as AuthTokenError
from .errors import AuthTokenExpiredError as AuthTokenExpiredError
from .errors import AuthTokenInvalidError as AuthTokenInvalidError
from .errors import AuthTokenNotBeforeError as AuthTokenNotBeforeError
from .errors import BadConnectionError as BadConnectionError
from .errors import BrokerError as BrokerError
from .errors import InvalidActionError as InvalidActionError
from .errors import InvalidArgumentsError as InvalidArgumentsError
from .errors import InvalidOptionsError as InvalidOptionsError
from .errors import NoHandlerError as NoHandlerError
from .errors import SilentMiddlewareBlockedError as SilentMiddlewareBlockedError
from .errors import SocketClusterError as SocketClusterError
from .errors import TimeoutError as TimeoutError
from .history import HistoryConfig as HistoryConfig
from .history import HistoryPolicy as HistoryPolicy
from .identity import IdentityProvider as IdentityProvider
from .identity import VerifiedToken as VerifiedToken
from .middleware import ALLOW as ALLOW
from .middleware import SILENT as SILENT
from .middleware import Allow as Allow
from .middleware import Block as Block
from .middleware import Hook as Hook
from .oidc import ProviderConfig as ProviderConfig
from .revocation import JtiRevoked as JtiRevoked
from .revocation import Revocation as Revocation
from .revocation import RevocationStore as RevocationStore
from .revocation import UserRevoked as UserRevoked
from .server import Reply as Reply
from .server import Server as Server
from .server import ServerSocket as ServerSocket

__version__ = "0.1.0"

__all__ = [
    "ALLOW",
    "SILENT",
    "Allow",
    "AuthEngine",
    "AuthError",
    "AuthTokenError",
    "AuthTokenExpiredError",
    "AuthTokenInvalidError",
    "AuthTokenNotBeforeError",
    "BadConnectionError",
    "Block",
    "Broker",
    "BrokerError",
    "HistoryBroker",
    "HistoryConfig",
    "HistoryPolicy",
    "Hook",
    "IdentityProvider",
    "InvalidActionError",
    "InvalidArgumentsError",
    "InvalidOptionsError",
    "JtiRevoked",
    "Keyring",
    "LocalBroker",
    "LocalRevocationStore",
    "NoHandlerError",
    "ProviderConfig",
    "Reply",
    "Revocation",
    "RevocationStore",
    "Server",
    "ServerConfig",
    "ServerSocket",
    "SilentMiddlewareBlockedError",
    "SocketClusterError",
    "TimeoutError",
    "UserRevoked",
    "VerifiedToken",
    "__version__",
]
