"""Domain logic: plain async functions taking a session; no Litestar imports, never commit."""
