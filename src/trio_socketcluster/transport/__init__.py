"""Transports: the frame-level interface (``base``), our wsproto transport (``ws``) and the
trio-websocket adapter (``trio_websocket``)."""
