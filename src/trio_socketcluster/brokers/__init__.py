"""Brokers: the ``Broker`` protocol and the in-process ``LocalBroker``."""

from .base import Broker, HistoryBroker, Subscriber
from .local import LocalBroker

__all__ = ["Broker", "HistoryBroker", "LocalBroker", "Subscriber"]
