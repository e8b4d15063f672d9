"""Transports: WebSocket, Server-Sent Events, plain HTTP. They talk to the hub only."""
