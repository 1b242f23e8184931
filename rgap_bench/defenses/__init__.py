"""Defences: transforms applied to a `ClientUpdate` before it leaves the client."""
