"""The kiosk: offline verification of phone credentials, and the agent that syncs with the server.

Runs on the kiosk computer; imports nothing from ``backend`` or Litestar.
"""
