"""Brokers: the ``Broker`` protocol and the in-process ``LocalBroker``."""

from .base import Broker, Subscriber
from .local import LocalBroker

__all__ = ["Broker", "LocalBroker", "Subscriber"]
