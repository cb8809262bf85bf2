"""Realtime: live events for apps (``WS /v1/realtime``) and commands to kiosks (``WS /v1/kiosk/channel``).

- ``visibility``: the one rule deciding which events an actor may see (websocket, catch-up, replay).
- ``relay``: per process, publishes committed events from the Event table to connected sockets,
  fanned out across processes through Redis when ``CONCIERGE_REDIS_URL`` is set.
- ``protocol``: the frames and close codes (parsing is total: every input gets a frame or a close).
- ``websocket``: the app endpoint; ``kiosk_channel``: the kiosk endpoint and ``send_command``.
"""
