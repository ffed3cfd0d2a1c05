"""Transports: the frame-level interface (``base``); the pure layers of our own transport, the
HTTP upgrade (``upgrade``) and the inbound frame reader (``frames``); our transport over trio
(``ws``); the trio-websocket adapter (``trio_websocket``); and what the last two share, the
close state and the writer (``_common``)."""
