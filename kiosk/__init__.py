"""The kiosk: offline verification of phone credentials, and the agent that syncs with the server.

Runs on the kiosk computer; imports nothing from ``backend`` or Litestar.

Trust model (docs/trust-model.md): the kiosk trusts its own key, the keys/revocations/targets
of its last authenticated sync, and its persisted time floor; nothing else. A presentation
(``<credential>~<kb-jwt>``, docs/protocol.md) is granted only if the credential is signed by a
synced Ed25519 key for this kiosk and one of its targets, is current and not revoked, is bound
to the presenting device by a fresh proof, and its ``jti`` has not been spent here. The jti is
recorded durably before anything opens; every decision is journaled until the server has it.

Modules: ``credential`` (wire format, shared with the server), ``verifier`` (the decision),
``store`` (SQLite state), ``state``/``client``/``agent`` (enrollment, sync, journal upload,
command channel), ``doors`` (door drivers), ``qr`` and ``ble`` (presentation channels),
``cli`` (``concierge-kiosk``).
"""
