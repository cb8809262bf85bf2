"""Concierge server: one-time phone credentials, parcels, keys and doors for rental properties."""
